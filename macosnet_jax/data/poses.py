"""The pose of a synthetic instance: a random affine plus a smooth displacement field, and its inverse.

The generating map of an instance is image point q -> canonical point u = A^-1 (D(q) - t) with D(q) = q + d(q),
d a low-frequency sum of sinusoids (`displacement`); `canonical_to_image` inverts it to place the landmarks
(|grad d| < 0.2: a contraction, so a fixed-point iteration converges). Used by `synthetic` (drawing and rendering
objects) and `warps` (the closed-form 2x2 inverse). Single instance; numpy or jax arrays; points (..., 2) xy in the
normalised frame of SPEC §1.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

DEFORM_TERMS = 2  # sinusoids per coordinate of the displacement field


def draw_pose(rng, scale_range, shift, rotation, deform_amp):
    """A canonical->image affine A (2, 2), t (2,) and a displacement field d (amp (T, 2), freq (T, 2, 2), phase (T, 2))."""
    angle = rng.uniform(-rotation, rotation)
    scale = rng.uniform(*scale_range)
    aspect = np.exp(rng.uniform(-0.2, 0.2))
    shear = rng.uniform(-0.15, 0.15)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    matrix = scale * rot @ np.array([[aspect, shear], [0.0, 1.0 / aspect]])
    t = rng.uniform(-shift, shift, 2)
    amp = rng.uniform(-deform_amp, deform_amp, (DEFORM_TERMS, 2))
    freq = rng.uniform(-1.0, 1.0, (DEFORM_TERMS, 2, 2)) * np.pi / np.sqrt(2.0)  # |freq row| <= pi
    phase = rng.uniform(-np.pi, np.pi, (DEFORM_TERMS, 2))
    return matrix, t, amp, freq, phase


def displacement(q, amp, freq, phase):
    """d(q) = sum_j amp_j sin(freq_j q + phase_j) per coordinate. q (..., 2); amp, phase (T, 2); freq (T, 2, 2)."""
    arg = jnp.einsum("...c,tdc->...td", q, freq) + phase  # (..., T, 2)
    return jnp.sum(amp * jnp.sin(arg), axis=-2)


def inverse_2x2(matrix):
    """Closed-form inverse of a (2, 2) matrix (jnp.linalg.inv lowers to an LU solve that costs seconds of compile)."""
    a, b, c, d = matrix[0, 0], matrix[0, 1], matrix[1, 0], matrix[1, 1]
    return jnp.stack([jnp.stack([d, -b]), jnp.stack([-c, a])]) / (a * d - b * c)


def image_to_canonical(q, matrix, t, amp, freq, phase):
    """The generating map of one instance: image points q (..., 2) -> canonical points u = A^-1 (D(q) - t)."""
    inv = inverse_2x2(jnp.asarray(matrix))
    return (q + displacement(q, amp, freq, phase) - t) @ inv.T


def canonical_to_image(u, matrix, t, amp, freq, phase, iterations=40):
    """Inverse of `image_to_canonical` for points u (P, 2): solves q + d(q) = A u + t by fixed-point iteration.

    The displacement's Lipschitz constant is <= 2 * 0.03 * pi < 0.2, so 40 iterations reach float precision.
    """
    y = u @ jnp.asarray(matrix).T + t
    return jax.lax.fori_loop(0, iterations, lambda _, q: y - displacement(q, amp, freq, phase), y)
