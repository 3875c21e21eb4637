"""The evaluation's jitted geometry: B's pixels mapped into A by the cascade's map, and masks resampled.

The metrics run on the host in numpy float64 one example at a time; these are the only device calls. Their inputs
are padded to power-of-two buckets, so that a whole dataset of images of many sizes compiles a handful of shapes
instead of one per pair.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from macosnet_jax import geometry

grid_sample = jax.jit(geometry.grid_sample)


def bucket(n):
    """Padded length for n points: a power of two >= 64, so a whole dataset compiles only a handful of shapes."""
    return max(64, 1 << max(0, int(n) - 1).bit_length())


@functools.partial(jax.jit, static_argnames="use_tps")
def _map_pixels(points_b, theta_aff, theta_tps, size_a, size_b, flip_a, use_tps):
    """B pixels (N, 2) -> (normalised positions in A (N, 2), A pixels (N, 2)); sizes (2,) = (height, width)."""
    normalized = geometry.pixels_to_normalized(points_b, size_b[0], size_b[1])
    if use_tps:
        mapped = geometry.composed_points(theta_aff, theta_tps, normalized)
    else:
        mapped = geometry.affine_points(theta_aff, normalized)
    mapped = jnp.where(flip_a, mapped * jnp.array([-1.0, 1.0]), mapped)
    return mapped, geometry.normalized_to_pixels(mapped, size_a[0], size_a[1])


def map_points(points_b, theta_aff, theta_tps, size_a, size_b, flip_a):
    """B's 1-indexed pixels (P, 2) -> (normalised positions in A (P, 2) float32, A's pixels (P, 2) float64), numpy.

    The map is p -> Aff(TPS(p)) (affine only when theta_tps is None; TPS regularisation 0); sizes (height, width).
    flip_a: A was mirrored before prediction; the predicted normalised x is negated to return to A's frame.
    """
    count = points_b.shape[0]
    padded = np.zeros((bucket(count), 2), np.float32)
    padded[:count] = points_b
    use_tps = theta_tps is not None
    theta_tps = np.asarray(theta_tps if use_tps else geometry.IDENTITY_TPS, np.float32).reshape(18)
    mapped, pixels = _map_pixels(padded, np.asarray(theta_aff, np.float32).reshape(6), theta_tps,
                                 np.asarray(size_a[:2], np.float32), np.asarray(size_b[:2], np.float32),
                                 bool(flip_a), use_tps=use_tps)
    return np.asarray(mapped)[:count], np.asarray(pixels, np.float64)[:count]


def resample(image, height, width):
    """An (S, S, C) float32 image -> (height, width, C) by corner-aligned bilinear sampling at the base grid.

    As geometry.resize_bilinear, but the grid is flattened and padded to a bucket (ground-truth masks come in many
    sizes).
    """
    height, width = int(height), int(width)
    grid = np.asarray(geometry.base_grid(height, width)).reshape(-1, 2)
    padded = np.zeros((1, bucket(grid.shape[0]), 2), np.float32)
    padded[0, : grid.shape[0]] = grid
    sampled = np.asarray(grid_sample(np.asarray(image, np.float32), padded))
    return sampled[0, : grid.shape[0]].reshape(height, width, -1)
