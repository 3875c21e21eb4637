"""SPEC §6.1: the foreground-guided matching loss (weak inlier count), on ONE example.

A correlation is (h, w, h·w) on the second image's grid with channel k = x_A·h + y_A; the score of a map T_AB
counts how much correlation mass lies where T_AB says B's cells match in A (weakalign's soft inlier count,
checked against the reference's fixtures), weighted per cell by B's foreground (`foreground_weight`).
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from macosnet_jax import geometry
from macosnet_jax.losses.masks import average_pool_to

OFFSET_FACTOR = 227.0 / 210.0
# Per-element epsilon of the inlier-mask normalisation (the denominator is Σm + 1e-5·(h·w)²).
_NORMALIZATION_EPS = 1e-5


def check_corr(corr: jax.Array) -> tuple[int, int]:
    if corr.ndim != 3 or corr.shape[-1] != corr.shape[0] * corr.shape[1]:
        raise ValueError(f"correlation must be (h, w, h·w) for one example; got {corr.shape}")
    return corr.shape[0], corr.shape[1]


def foreground_weight(kind: str, corr: jax.Array, mask_b: Optional[jax.Array] = None) -> Optional[jax.Array]:
    """Per-cell foreground weight w (h, w) on B's grid for the matching score, or None for w = 1.

    kind: 'mask' (paper): B's mask probabilities (H, W) average-pooled to the grid; 'maxcorr' (released code):
    w(q) = max_p C_AB(q, p); 'none' (weakalign): None.
    """
    h, w = check_corr(corr)
    if kind == "none":
        return None
    if kind == "maxcorr":
        return jnp.max(corr, axis=-1)
    if kind == "mask":
        if mask_b is None:
            raise ValueError("foreground_weight('mask') needs the mask of image B (mask_b)")
        return average_pool_to(mask_b, h, w)
    raise ValueError(f"foreground weight kind must be 'mask', 'maxcorr' or 'none'; got {kind!r}")


def inlier_sampling_grid(theta_aff: jax.Array, theta_tps: Optional[jax.Array], height: int, width: int, *,
                         offset_factor: float = OFFSET_FACTOR, tps_reg: float = 0.2) -> jax.Array:
    """The loss-time sampling grid (height, width, 2) on B's feature grid: u = T_o(q) in A.

    Affine: A q + o t. Composed: the reference's composition (geometry.composed_grid) of the offset affine grid
    and the offset TPS grid o·T(q/o) with λ = tps_reg; invalid cells hold -1e10 so they match nothing.
    """
    if theta_tps is None:
        return geometry.affine_grid(theta_aff, height, width, offset_factor)
    grid, _ = geometry.composed_grid(theta_aff, theta_tps, height, width, tps_reg, offset_factor)
    return grid


def inlier_mask(grid: jax.Array, *, kernel: str = "bilinear", ball_radius: float = 1.0) -> jax.Array:
    """Correspondence mask m (h, w, h·w) from a sampling grid (h, w, 2) on B's grid into A's (same-size) grid.

    'bilinear': m(q, k) = max(0, 1 - |u_x - x_k|)·max(0, 1 - |u_y - y_k|) in grid-index units (what the
    reference gets by bilinearly warping the one-hot identity mask); 'ball': 1 iff ‖u - p_k‖ ≤ ball_radius cells
    (the paper's hard threshold; no gradient with respect to the map). Channel k = x_A·h + y_A.
    """
    h, w = grid.shape[:2]
    ux = (grid[..., 0] + 1.0) / 2.0 * (w - 1)  # (h, w)
    uy = (grid[..., 1] + 1.0) / 2.0 * (h - 1)
    dx = ux[..., None] - jnp.arange(w, dtype=jnp.float32)  # (h, w, w_A)
    dy = uy[..., None] - jnp.arange(h, dtype=jnp.float32)  # (h, w, h_A)
    if kernel == "bilinear":
        m = jnp.maximum(0.0, 1.0 - jnp.abs(dx))[..., :, None] * jnp.maximum(0.0, 1.0 - jnp.abs(dy))[..., None, :]
    elif kernel == "ball":
        m = (dx[..., :, None] ** 2 + dy[..., None, :] ** 2 <= ball_radius ** 2).astype(jnp.float32)
    else:
        raise ValueError(f"inlier kernel must be 'bilinear' or 'ball'; got {kernel!r}")
    return m.reshape(h, w, w * h)  # (x_A, y_A) flattened x-major: k = x_A·h + y_A


def inlier_cell_scores(corr: jax.Array, theta_aff: jax.Array, theta_tps: Optional[jax.Array] = None, *,
                       offset_factor: float = OFFSET_FACTOR, tps_reg: float = 0.2, normalize: bool = True,
                       kernel: str = "bilinear", ball_radius: float = 1.0) -> jax.Array:
    """Per-cell scores s(q) (h, w) = Σ_k m̂(q, k)·C_AB(q, k); m̂ = m / Σ(m + 1e-5) when `normalize`.

    See `inlier_score` for the arguments; the total is Σ_q w(q)·s(q).
    """
    h, w = check_corr(corr)
    grid = inlier_sampling_grid(theta_aff, theta_tps, h, w, offset_factor=offset_factor, tps_reg=tps_reg)
    m = inlier_mask(grid, kernel=kernel, ball_radius=ball_radius)
    if normalize:
        m = m / (jnp.sum(m) + _NORMALIZATION_EPS * m.size)
    return jnp.sum(m * corr, axis=-1)


def inlier_score(corr: jax.Array, theta_aff: jax.Array, theta_tps: Optional[jax.Array] = None, *,
                 offset_factor: float = OFFSET_FACTOR, tps_reg: float = 0.2, normalize: bool = True,
                 kernel: str = "bilinear", ball_radius: float = 1.0,
                 fg_weight: Optional[jax.Array] = None) -> jax.Array:
    """Weak inlier score of the map T_AB against the stage-1 correlation (scalar; higher is better).

    corr: normalised correlation C_AB (h, w, h·w) on B's grid. theta_aff (6,); theta_tps (18,) or None: without
    it the affine score, with it the composed score Aff(TPS(·)) (valid only where the TPS output and the affine
    nodes it reads are strictly inside (-1, 1)). offset_factor: o of the loss-time maps (227/210). tps_reg: λ
    of the TPS inside this loss (0.2). normalize: divide the mask by Σ(m + 1e-5) (weakalign default).
    kernel / ball_radius: see `inlier_mask`. fg_weight: (h, w) per-cell weight (`foreground_weight`) or None.
    """
    scores = inlier_cell_scores(corr, theta_aff, theta_tps, offset_factor=offset_factor, tps_reg=tps_reg,
                                normalize=normalize, kernel=kernel, ball_radius=ball_radius)
    if fg_weight is not None:
        if fg_weight.shape != scores.shape:
            raise ValueError(f"fg_weight must be ({scores.shape[0]}, {scores.shape[1]}) on B's grid; "
                             f"got {fg_weight.shape}")
        scores = scores * fg_weight
    return jnp.sum(scores)


def matching_loss(corr_ab: jax.Array, theta_aff_ab: jax.Array, theta_tps_ab: jax.Array,
                  corr_ba: Optional[jax.Array] = None, theta_aff_ba: Optional[jax.Array] = None,
                  theta_tps_ba: Optional[jax.Array] = None, *, fg_weight_ab: Optional[jax.Array] = None,
                  fg_weight_ba: Optional[jax.Array] = None, **score_kwargs) -> jax.Array:
    """L_matching = −(mean_dir score_aff + mean_dir score_composed) over the directions given (SPEC §6.1).

    corr_ab (h, w, h·w): normalised stage-1 C_AB on B's grid, scored with T_AB = (θ_aff_ab, θ_tps_ab);
    corr_ba likewise on A's grid with T_BA (omit the BA arguments for weakalign's single direction).
    fg_weight_ab (h, w) weights B's cells, fg_weight_ba A's cells. score_kwargs go to `inlier_score`.
    """
    def direction(corr, theta_aff, theta_tps, weight):
        aff = inlier_score(corr, theta_aff, None, fg_weight=weight, **score_kwargs)
        comp = inlier_score(corr, theta_aff, theta_tps, fg_weight=weight, **score_kwargs)
        return aff, comp

    aff, comp = direction(corr_ab, theta_aff_ab, theta_tps_ab, fg_weight_ab)
    if corr_ba is not None:
        aff_ba, comp_ba = direction(corr_ba, theta_aff_ba, theta_tps_ba, fg_weight_ba)
        aff, comp = (aff + aff_ba) / 2.0, (comp + comp_ba) / 2.0
    return -(aff + comp)
