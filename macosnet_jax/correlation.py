"""Feature L2 normalisation and the correlation volume of SPEC §2–3, in the reference's channel order.

The channel order matters: the first regression conv of every released weakalign/CNNGeo checkpoint expects its 225
input channels as A-positions in column-major order, k = x_A·h + y_A (x is the slow index). All functions work on
one example, (h, w, c) features.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def l2_normalize(features, eps=1e-6):
    """features (..., c) / sqrt(Σ_c f² + eps): the reference's featureL2Norm (epsilon inside the root)."""
    return features / jnp.sqrt(jnp.sum(features * features, axis=-1, keepdims=True) + eps)


def _a_positions_column_major(f_a):
    """(h, w, c) -> (h·w, c) with row k = x·h + y (column-major A positions)."""
    h, w, c = f_a.shape
    return jnp.transpose(f_a, (1, 0, 2)).reshape(w * h, c)


def correlation(f_a, f_b):
    """Raw correlation C_AB (h, w, h·w) on B's grid: C[i, j, x_A·h + y_A] = <f_a[y_A, x_A], f_b[i, j]>.

    f_a, f_b: (h, w, c) on the same grid size. Computed as one matrix product.
    """
    if f_a.ndim != 3 or f_a.shape != f_b.shape:
        raise ValueError(f"features must be (h, w, c) of equal shapes for one example; got {f_a.shape} and {f_b.shape}")
    # True float32, as the reference's torch.bmm (PyTorch keeps TF32 off for matmuls by default; XLA on GPUs would
    # use it and move the correlation by ~1e-4 relative on an H200). Cheap: one (h·w, c) x (c, h·w) product.
    return jnp.einsum("ijc,kc->ijk", f_b, _a_positions_column_major(f_a), precision=jax.lax.Precision.HIGHEST)


def normalize_correlation(corr, eps=1e-6):
    """ReLU, then L2 over the channel axis (the A positions) at each B position."""
    return l2_normalize(jnp.maximum(corr, 0.0), eps)


def swap_correlation(corr_ab):
    """C_BA (h, w, h·w) on A's grid from the UN-normalised C_AB (h, w, h·w): a permutation, no new dot products.

    C_BA[y_A, x_A, x_B·h + y_B] = C_AB[y_B, x_B, x_A·h + y_A].
    """
    h, w, k = corr_ab.shape
    if k != h * w:
        raise ValueError(f"correlation must be (h, w, h·w); got {corr_ab.shape}")
    by_position = corr_ab.reshape(h, w, w, h)  # [y_B, x_B, x_A, y_A]
    return jnp.transpose(by_position, (3, 2, 1, 0)).reshape(h, w, w * h)  # [y_A, x_A, x_B, y_B]
