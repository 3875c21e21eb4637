"""The MaCoSNet training losses of SPEC §6, as pure functions on ONE example (vmap and mean over the batch).

Conventions (SPEC §1): a map T_XY is a *sampling map* from Y's frame to X's frame, given by an affine θ (6,)
and optionally a TPS θ (18,); with both, the map is the cascade's p ↦ Aff(TPS(p)). Points are (P, 2) xy in
normalised corner-aligned coordinates; correlations are (h, w, h·w) on the second image's grid with channel
k = x_A·h + y_A; masks are (H, W) probabilities or logits at image resolution.

Terms:
  §6.1 `inlier_score` / `matching_loss`   foreground-guided weak inlier count (weakalign's score, fixture parity)
  §6.2 `cycle_loss` / `cycle_loss_compat` forward-backward consistency
  §6.3 `transitivity_loss`                A ← B ← C ← A consistency on triplets
  §6.4 `contrastive_loss`, `masked_images` perceptual contrastive loss (descriptors come from the caller)
  §6.5 `task_loss`                        cross-network (mask ↔ warp) consistency
  §6.6 `total_loss`                       the weighted sum, on a batch of model outputs
  §6.7 `grid_loss`                        strong supervision (CNNGeo)
"""
from __future__ import annotations

from typing import Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from macosnet_jax import geometry

OFFSET_FACTOR = 227.0 / 210.0
# Per-element epsilon of the inlier-mask normalisation (the denominator is Σm + 1e-5·(h·w)²).
_NORMALIZATION_EPS = 1e-5


# ----------------------------------------------------------------------------------------------------------
# Small helpers.


def _check_corr(corr: jax.Array) -> tuple[int, int]:
    if corr.ndim != 3 or corr.shape[-1] != corr.shape[0] * corr.shape[1]:
        raise ValueError(f"correlation must be (h, w, h·w) for one example; got {corr.shape}")
    return corr.shape[0], corr.shape[1]


def _check_mask(mask: jax.Array, name: str) -> None:
    if mask.ndim != 2:
        raise ValueError(f"{name} must be an (H, W) map for one example; got shape {mask.shape}")


def map_points(theta_aff: jax.Array, theta_tps: Optional[jax.Array], points: jax.Array,
               reg: float = 0.0) -> jax.Array:
    """Applies the sampling map (θ_aff (6,), θ_tps (18,) or None) to points (P, 2): Aff(TPS(p)) or Aff(p)."""
    if theta_tps is None:
        return geometry.affine_points(theta_aff, points)
    return geometry.composed_points(theta_aff, theta_tps, points, reg)


def regular_points(grid_size: int) -> jax.Array:
    """(K², 2) points of a K×K regular grid spanning [-1, 1]² (corner-aligned, both borders included)."""
    return geometry.base_grid(grid_size, grid_size).reshape(-1, 2)


def _safe_norm(v: jax.Array) -> jax.Array:
    """Euclidean norm over the last axis whose gradient is 0 (not NaN) at v = 0 (an exact inverse pair)."""
    squared = jnp.sum(v * v, axis=-1)
    positive = squared > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), 0.0)


def average_pool_to(mask: jax.Array, height: int, width: int) -> jax.Array:
    """(H, W) -> (height, width) by block averaging; H, W must be multiples of the target size."""
    _check_mask(mask, "mask")
    big_h, big_w = mask.shape
    if big_h % height or big_w % width:
        raise ValueError(f"cannot average-pool a {big_h}x{big_w} mask to the {height}x{width} feature grid: "
                         "the image size must be a multiple of the grid size")
    return mask.reshape(height, big_h // height, width, big_w // width).mean(axis=(1, 3))


def foreground_weight(kind: str, corr: jax.Array, mask_b: Optional[jax.Array] = None) -> Optional[jax.Array]:
    """Per-cell foreground weight w (h, w) on B's grid for the matching score, or None for w = 1.

    kind: 'mask' (paper): B's mask probabilities (H, W) average-pooled to the grid; 'maxcorr' (released code):
    w(q) = max_p C_AB(q, p); 'none' (weakalign): None.
    """
    h, w = _check_corr(corr)
    if kind == "none":
        return None
    if kind == "maxcorr":
        return jnp.max(corr, axis=-1)
    if kind == "mask":
        if mask_b is None:
            raise ValueError("foreground_weight('mask') needs the mask of image B (mask_b)")
        return average_pool_to(mask_b, h, w)
    raise ValueError(f"foreground weight kind must be 'mask', 'maxcorr' or 'none'; got {kind!r}")


# ----------------------------------------------------------------------------------------------------------
# §6.1 Foreground-guided matching loss (weak inlier count).


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
    h, w = _check_corr(corr)
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


def matching_mask_signal(corr: jax.Array, theta_aff: jax.Array, theta_tps: jax.Array, mask_b: jax.Array,
                         **score_kwargs) -> jax.Array:
    """Zero-valued term whose gradient tells B's mask (H, W) which cells the map T_AB matches well (scalar).

    −mean_q (w(q) − sg w(q))·sg(z(q)), summed over the affine and composed maps, where w = mask_b pooled to the
    grid and z = (s − mean s)/std s standardises the per-cell scores s = `inlier_cell_scores`: the gradient with
    respect to w(q) is −z(q)/(h·w), so cells that match better than the image's average grow and the others
    shrink, with a strength that does not depend on the correlation's scale. Its value is exactly 0 and no gradient
    reaches θ or the correlation. Why: the paper's −Σ_q M_B(q) s(q) has ∂/∂M_B(q) = −s(q) ≤ 0 at every cell,
    which only says "more foreground"; centring keeps its information (where matching succeeds: on the
    common object) without that drift. Used with `total_loss(fg_weight_gradient='centered')`.
    """
    h, w = _check_corr(corr)
    weight = average_pool_to(mask_b, h, w)
    delta = weight - jax.lax.stop_gradient(weight)
    total = 0.0
    for tps in (None, theta_tps):
        scores = jax.lax.stop_gradient(inlier_cell_scores(corr, theta_aff, tps, **score_kwargs))
        total = total - jnp.mean(delta * _standardize(scores))
    return total


def pseudo_label_scores(partners: Sequence[tuple], *, own_logits: Optional[jax.Array] = None,
                        own_weight: float = 0.0, **score_kwargs) -> jax.Array:
    """Standardised per-cell matching score z (h, w) of one image: how well its partners' maps match each cell.

    partners: non-empty sequence of (corr, theta_aff, theta_tps): a normalised correlation on *this* image's grid
      (h, w, h'·w') and the map from this image into the partner (for A with partner B: C_BA, T_BA; in a triplet
      A also has C: C_CA, T_CA). score_kwargs: as `inlier_cell_scores`.
    Per partner r(q) = s(q) / max_k C(q, k): the inlier score of the predicted match (composed map) relative to
    the cell's best correlation anywhere in the partner. On the common object the predicted match is the best one;
    distinctive background cells have peaky correlations and high raw scores s, which the ratio discounts (cell AUC
    against the ground truth on the demo data: s 0.75, r 0.77, r averaged over B and C 0.83).
    z = standardise(mean over partners of standardise(r)).
    own_logits (H, W), own_weight β: self-training. With β ≠ 0, z = standardise(z + β · standardise(the image's
    own mask logits average-pooled to the grid)), gradient stopped: the mask, once it ranks pixels better than
    the matching teacher ranks cells, sharpens its own labels while the matching evidence anchors them (cell AUC
    on the demo data, B + C: teacher 0.83; with β = 1 and the untrained decoder 0.89, after 200 joint steps 0.92).
    """
    if not partners:
        raise ValueError("pseudo_label_scores: needs at least one partner (corr, theta_aff, theta_tps)")
    standardized = []
    for corr, theta_aff, theta_tps in partners:
        _check_corr(corr)
        ratio = inlier_cell_scores(corr, theta_aff, theta_tps, **score_kwargs) / (jnp.max(corr, axis=-1) + 1e-6)
        standardized.append(_standardize(ratio))
    z = _standardize(sum(standardized) / len(standardized))
    if own_logits is None or own_weight == 0.0:
        return z
    _check_mask(own_logits, "own_logits")
    h, w = partners[0][0].shape[:2]
    own = average_pool_to(jax.lax.stop_gradient(own_logits), h, w)
    return _standardize(z + own_weight * _standardize(own))


def matching_pseudo_labels(partners: Sequence[tuple], *, threshold: float = 0.5, sharpness: float = 10.0,
                           **score_kwargs) -> jax.Array:
    """Soft foreground targets (h, w) for one image's cells: σ(sharpness·(z − threshold)) of
    `pseudo_label_scores` (same partners and score_kwargs); constant: a teacher for the masks, with no gradient
    to θ or the correlations."""
    z = pseudo_label_scores(partners, **score_kwargs)
    return jax.lax.stop_gradient(jax.nn.sigmoid(sharpness * (z - threshold)))


def _standardize(x: jax.Array) -> jax.Array:
    """(x − mean)/(std + 1e-8) over all of x."""
    return (x - jnp.mean(x)) / (jnp.std(x) + 1e-8)


def confident_pseudo_labels(partners: Sequence[tuple], *, low: float = 0.0, high: float = 1.0,
                            **score_kwargs) -> tuple[jax.Array, jax.Array]:
    """Hard foreground targets with an ignore band: (targets, weights), both (h, w) in {0, 1}, constant.

    z = `pseudo_label_scores(partners)`; cells with z > high are foreground (target 1, weight 1), cells with
    z < low background (target 0, weight 1), the cells in between are ignored (weight 0). Why: a mask trained by
    BCE on soft labels σ(k(z − τ)) regresses to the labels' conditional mean, and on the demo data that is ≈ 0.6 on
    the object and ≈ 0.35 on the background (J 0.38 at 0.5); leaving out the ambiguous band makes the labelled
    object cells almost all foreground (93 % with B + C, 99 % with 8 partners, band [0, 1]) while background
    stays mostly background (18 % / 16 %), so the mask is calibrated at 0.5.
    """
    if not low <= high:
        raise ValueError(f"confident_pseudo_labels: need low <= high; got low={low}, high={high}")
    z = pseudo_label_scores(partners, **score_kwargs)
    targets = (z > high).astype(jnp.float32)
    weights = ((z > high) | (z < low)).astype(jnp.float32)
    return jax.lax.stop_gradient(targets), jax.lax.stop_gradient(weights)


def pseudo_label_loss(mask_logits: jax.Array, target_cells: jax.Array, weight_cells: Optional[jax.Array] = None, *,
                      balanced: bool = False) -> jax.Array:
    """BCE of mask logits (H, W) against cell targets (h, w) upsampled bilinearly (scalar).

    The upsampling is half-pixel aligned (jax.image.resize 'linear'), the inverse of `average_pool_to`'s blocks:
    cell centres sit at the centres of their H/h × W/w pixel blocks. weight_cells (h, w) ≥ 0, upsampled the same
    way, weights each pixel (None: all 1); the result is the weighted mean. balanced: the weighted means over
    foreground (weight · target) and background (weight · (1 − target)) pixels are taken separately and averaged,
    so an object covering 13 % of the image pulls as hard as its background (an empty side contributes 0).
    Gradient on the logits: weight · (σ(l) − t) / normaliser, which, unlike a push on σ(l), does not vanish where
    the mask saturates on the wrong side.
    """
    _check_mask(mask_logits, "mask_logits")
    target = jax.image.resize(target_cells, mask_logits.shape, "linear")
    if weight_cells is None and not balanced:
        return _bce_with_logits(target, mask_logits)
    weight = jnp.ones_like(target) if weight_cells is None else jax.image.resize(
        weight_cells, mask_logits.shape, "linear")
    per_pixel = _bce_per_pixel(target, mask_logits)
    if not balanced:
        return jnp.sum(weight * per_pixel) / (jnp.sum(weight) + 1e-6)
    fg, bg = weight * target, weight * (1.0 - target)
    return 0.5 * (jnp.sum(fg * per_pixel) / (jnp.sum(fg) + 1e-6) + jnp.sum(bg * per_pixel) / (jnp.sum(bg) + 1e-6))


# ----------------------------------------------------------------------------------------------------------
# §6.2 Forward-backward consistency and §6.3 transitivity.


def cycle_loss(theta_aff_ab: jax.Array, theta_tps_ab: Optional[jax.Array], theta_aff_ba: jax.Array,
               theta_tps_ba: Optional[jax.Array], *, grid_size: int = 10) -> jax.Array:
    """Forward-backward consistency (paper eq. 4), scalar in normalised units.

    ½(mean_{p∈A} ‖T_AB(T_BA(p)) − p‖ + mean_{q∈B} ‖T_BA(T_AB(q)) − q‖) over a K×K grid (K = grid_size).
    Maps are composed Aff(TPS(·)) (λ = 0); pass None for a θ_tps to use the affine map alone.
    """
    points = regular_points(grid_size)
    back_a = map_points(theta_aff_ab, theta_tps_ab, map_points(theta_aff_ba, theta_tps_ba, points))
    back_b = map_points(theta_aff_ba, theta_tps_ba, map_points(theta_aff_ab, theta_tps_ab, points))
    return 0.5 * (jnp.mean(_safe_norm(back_a - points)) + jnp.mean(_safe_norm(back_b - points)))


def _compat_points() -> np.ndarray:
    """The released code's 100×100 pixel grid in 240-px units: point 100 i + j = (2.4 i, 2.4 j)."""
    i, j = np.meshgrid(np.arange(100), np.arange(100), indexing="ij")
    return np.stack([2.4 * i.reshape(-1), 2.4 * j.reshape(-1)], axis=-1).astype(np.float32)


def cycle_loss_compat(theta_ab: jax.Array, theta_ba: jax.Array, image_size: int = 240) -> jax.Array:
    """The released code's cycle loss, ONE direction: affine only, squared error in pixel units.

    Points c (10000, 2) on the 100×100 grid x = 2.4 i (240-px units) -> normalised (1-indexed convention) ->
    θ_ab -> pixels -> normalised -> θ_ba -> pixels c''; returns mean_points ‖c − c''‖². The released
    `loss_cycle` is the mean of this over the batch and over both directions (ab, ba) and (ba, ab).
    """
    pixels = jnp.asarray(_compat_points())

    def through(theta, pts):
        unit = geometry.pixels_to_normalized(pts, image_size, image_size)
        return geometry.normalized_to_pixels(geometry.affine_points(theta, unit), image_size, image_size)

    back = through(theta_ba, through(theta_ab, pixels))
    return jnp.mean(jnp.sum((pixels - back) ** 2, axis=-1))


def transitivity_loss(theta_aff_ab: jax.Array, theta_tps_ab: Optional[jax.Array], theta_aff_bc: jax.Array,
                      theta_tps_bc: Optional[jax.Array], theta_aff_ca: jax.Array,
                      theta_tps_ca: Optional[jax.Array], *, grid_size: int = 10) -> jax.Array:
    """Transitivity on a triplet (paper eq. 5), scalar in normalised units.

    With sampling maps T_AB: B→A, T_BC: C→B, T_CA: A→C, the loop A ← B ← C ← A must be the identity:
    mean over the chains starting at A, B and C of mean_p ‖loop(p) − p‖ on a K×K grid:
    A: T_AB(T_BC(T_CA(p))), B: T_BC(T_CA(T_AB(q))), C: T_CA(T_AB(T_BC(r))).
    """
    points = regular_points(grid_size)
    ab = lambda p: map_points(theta_aff_ab, theta_tps_ab, p)  # noqa: E731
    bc = lambda p: map_points(theta_aff_bc, theta_tps_bc, p)  # noqa: E731
    ca = lambda p: map_points(theta_aff_ca, theta_tps_ca, p)  # noqa: E731
    loops = (ab(bc(ca(points))), bc(ca(ab(points))), ca(ab(bc(points))))
    return sum(jnp.mean(_safe_norm(loop - points)) for loop in loops) / 3.0


# ----------------------------------------------------------------------------------------------------------
# §6.4 Perceptual contrastive loss.


def masked_images(image: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(I° = M ⊙ I, Iᵇ = (1 − M) ⊙ I) for a normalised image (H, W, C) and mask probabilities (H, W).

    Applied to the ImageNet-normalised tensor, so masked-out pixels become the mean colour (value 0).
    """
    _check_mask(mask, "mask")
    if image.shape[:2] != mask.shape:
        raise ValueError(f"mask {mask.shape} must match the image's (H, W) {image.shape[:2]}")
    m = mask[..., None]
    return m * image, (1.0 - m) * image


def contrastive_loss(desc_fg_a: jax.Array, desc_fg_b: jax.Array, desc_bg_a: jax.Array, desc_bg_b: jax.Array,
                     margin: float = 1.0) -> jax.Array:
    """d⁺ + d⁻ on descriptors (c,) of F(I°_A), F(I°_B), F(Iᵇ_A), F(Iᵇ_B) (paper eq. 6–9), scalar.

    d⁺ = ‖F(I°_A) − F(I°_B)‖²/c pulls the two foregrounds together; d⁻ = max(0, margin − (‖F(I°_A) −
    F(Iᵇ_A)‖² + ‖F(I°_B) − F(Iᵇ_B)‖²)/(2c)) pushes each foreground from its own background.
    """
    c = desc_fg_a.shape[-1]
    positive = jnp.sum((desc_fg_a - desc_fg_b) ** 2) / c
    separation = (jnp.sum((desc_fg_a - desc_bg_a) ** 2) + jnp.sum((desc_fg_b - desc_bg_b) ** 2)) / (2.0 * c)
    return positive + jnp.maximum(0.0, margin - separation)


# ----------------------------------------------------------------------------------------------------------
# §6.5 Cross-network consistency.


def warp_mask(mask: jax.Array, theta_aff: jax.Array, theta_tps: Optional[jax.Array] = None) -> jax.Array:
    """Mask of A (H, W) sampled with T_AB onto B's grid (same size): M̃_A(q) = M_A(T_AB(q)), zero outside."""
    _check_mask(mask, "mask")
    h, w = mask.shape
    grid = map_points(theta_aff, theta_tps, geometry.base_grid(h, w).reshape(-1, 2)).reshape(h, w, 2)
    return geometry.grid_sample(mask[..., None], grid)[..., 0]


def _bce_per_pixel(target: jax.Array, logits: jax.Array) -> jax.Array:
    """−[t log σ(l) + (1 − t) log(1 − σ(l))] per pixel, computed stably from logits."""
    return jax.nn.softplus(logits) - target * logits


def _bce_with_logits(target: jax.Array, logits: jax.Array) -> jax.Array:
    """Mean over pixels of `_bce_per_pixel`."""
    return jnp.mean(_bce_per_pixel(target, logits))


def task_loss(mask_logits_a: jax.Array, mask_logits_b: jax.Array, theta_aff_ab: jax.Array,
              theta_tps_ab: Optional[jax.Array], theta_aff_ba: jax.Array, theta_tps_ba: Optional[jax.Array], *,
              stop_gradient_target: bool = False) -> jax.Array:
    """L_task = BCE(M̃_A, M_B) + BCE(M̃_B, M_A) (paper eq. 10–11), scalar.

    mask_logits_a, mask_logits_b: (H, W) decoder logits. M̃_A = σ(logits_A) warped by T_AB onto B's grid (composed
    map; None θ_tps: affine only, the released code); M̃_B by T_BA. stop_gradient_target stops gradients
    through the warped targets (the reference does not).
    """
    mask_a, mask_b = jax.nn.sigmoid(mask_logits_a), jax.nn.sigmoid(mask_logits_b)
    target_b = warp_mask(mask_a, theta_aff_ab, theta_tps_ab)  # on B's grid
    target_a = warp_mask(mask_b, theta_aff_ba, theta_tps_ba)  # on A's grid
    if stop_gradient_target:
        target_a, target_b = jax.lax.stop_gradient(target_a), jax.lax.stop_gradient(target_b)
    return _bce_with_logits(target_b, mask_logits_b) + _bce_with_logits(target_a, mask_logits_a)


# ----------------------------------------------------------------------------------------------------------
# §6.7 Strong supervision.


def grid_loss(theta_pred: jax.Array, theta_true: jax.Array, kind: str = "affine", grid_size: int = 20) -> jax.Array:
    """Mean over a 20×20 grid in [-1, 1]² of ‖T_θ̂(p) − T_θ(p)‖² (CNNGeo's transformed-grid loss), scalar.

    kind: 'affine' (θ (6,)) or 'tps' (θ (18,), λ = 0).
    """
    points = regular_points(grid_size)
    if kind == "affine":
        apply = geometry.affine_points
    elif kind == "tps":
        apply = geometry.tps_points
    else:
        raise ValueError(f"grid_loss kind must be 'affine' or 'tps'; got {kind!r}")
    return jnp.mean(jnp.sum((apply(theta_pred, points) - apply(theta_true, points)) ** 2, axis=-1))


# ----------------------------------------------------------------------------------------------------------
# §6.6 The full objective on a batch of model outputs.

DEFAULT_WEIGHTS = {"matching": 1.0, "cycle": 1.0, "transitivity": 1.0, "contrastive": 1.0, "task": 1.0}


def total_loss(outputs: Mapping, weights: Mapping[str, float] = DEFAULT_WEIGHTS, *,
               images: Optional[Mapping[str, jax.Array]] = None,
               descriptor_fn: Optional[Callable[[jax.Array], jax.Array]] = None,
               fg_weight: str = "mask", fg_weight_gradient: str = "stop", inlier_kernel: str = "bilinear",
               offset_factor: float = OFFSET_FACTOR, tps_reg: float = 0.2, cycle_grid_size: int = 10,
               composed_consistency: bool = True, cycle_compat: bool = False,
               task_stop_gradient: bool = False, margin: float = 1.0, pseudo_label_threshold: float = 0.5,
               pseudo_label_sharpness: float = 10.0, pseudo_label_low: Optional[float] = None,
               pseudo_label_balanced: bool = False, pseudo_label_self_weight: float = 0.0
               ) -> tuple[jax.Array, dict]:
    """L = λ_match L_matching + λ_cycle L_cycle + λ_trans L_trans + λ_contrast L_contrast + λ_task L_task.

    outputs: batched model outputs (MaCoSNet.triplet / .pair): 'theta_aff' and 'theta_tps' map directions
      ('ab', 'ba', and 'bc', 'ca' for triplets) to (B, 6) / (B, 18); 'corr' maps 'ab', 'ba' to the normalised
      stage-1 correlations (B, h, w, h·w); 'mask_logits' maps 'a', 'b' to (B, H, W).
    weights: λ per term name ('matching', 'cycle', 'transitivity', 'contrastive', 'task'); a term with weight 0
      or a missing key is skipped (not computed). Transitivity needs 'bc' and 'ca'.
    images: {'a', 'b'} normalised images (B, H, W, 3) and descriptor_fn: (N, H, W, 3) -> (N, c), the frozen
      perceptual network (the caller stops gradients to its weights); both needed for the contrastive term.
    fg_weight: 'mask' | 'maxcorr' | 'none' (SPEC §6.1). fg_weight_gradient: what the matching term tells the
      masks when fg_weight='mask' (SPEC is silent; `matching_mask_signal`): 'stop' none (the matching term only
      trains θ and the encoder); 'raw' the paper's −Σ M_B(q) s(q) differentiated as it stands (every cell has
      s(q) ≥ 0, so it pushes all masks towards foreground); 'centered' cells matched better than their image's
      average are pushed up, the others down (saturating: a push on σ(l) fades where σ'(l) → 0); 'pseudo_label'
      adds the term 'mask_label' (weighted by λ_match): BCE of each mask against `matching_pseudo_labels` from its
      partners (A: B, and C in a triplet; B: A), i.e. cells whose predicted match is close to their best match are
      labelled foreground. pseudo_label_threshold / pseudo_label_sharpness: its z threshold and slope (the
      matching term's own value and θ-gradients are those of 'stop'). pseudo_label_low: None for those soft
      labels; a number for `confident_pseudo_labels` instead (foreground above pseudo_label_threshold, background
      below pseudo_label_low, the band between ignored). pseudo_label_balanced: foreground and background pixels
      weigh equally in the BCE (`pseudo_label_loss`). pseudo_label_self_weight: β of `pseudo_label_scores`
      (the mask's own, gradient-stopped logits join the matching evidence; 0: matching alone). composed_consistency: cycle,
      transitivity and task on Aff(TPS(·)) (False: affine only, the released code). cycle_compat: the
      released cycle loss instead (`cycle_loss_compat`, both directions averaged; squared 240-px units).
    Returns (loss, {term: unweighted batch mean}); terms are the weighted names, plus 'mask_label' when on.
    """
    theta_aff, theta_tps = outputs["theta_aff"], outputs["theta_tps"]
    tps = (lambda d: theta_tps[d]) if composed_consistency else (lambda d: None)
    logits = outputs["mask_logits"]
    probs = {k: jax.nn.sigmoid(v) for k, v in logits.items()}
    use = lambda name: float(weights.get(name, 0.0)) != 0.0  # noqa: E731
    terms = {}

    if use("matching"):
        if fg_weight_gradient not in ("stop", "raw", "centered", "pseudo_label"):
            raise ValueError("fg_weight_gradient must be 'stop', 'raw', 'centered' or 'pseudo_label'; "
                             f"got {fg_weight_gradient!r}")
        score_kwargs = dict(offset_factor=offset_factor, tps_reg=tps_reg, kernel=inlier_kernel)

        def pooled_weight(corr, mask):
            w = foreground_weight(fg_weight, corr, mask)
            return w if w is None or fg_weight_gradient == "raw" else jax.lax.stop_gradient(w)

        def one(corr_ab, corr_ba, aff_ab, tps_ab, aff_ba, tps_ba, mask_a, mask_b):
            loss = matching_loss(corr_ab, aff_ab, tps_ab, corr_ba, aff_ba, tps_ba,
                                 fg_weight_ab=pooled_weight(corr_ab, mask_b),
                                 fg_weight_ba=pooled_weight(corr_ba, mask_a), **score_kwargs)
            if fg_weight == "mask" and fg_weight_gradient == "centered":
                loss = loss + 0.5 * (matching_mask_signal(corr_ab, aff_ab, tps_ab, mask_b, **score_kwargs)
                                     + matching_mask_signal(corr_ba, aff_ba, tps_ba, mask_a, **score_kwargs))
            return loss
        terms["matching"] = jnp.mean(jax.vmap(one)(
            outputs["corr"]["ab"], outputs["corr"]["ba"], theta_aff["ab"], theta_tps["ab"], theta_aff["ba"],
            theta_tps["ba"], probs["a"], probs["b"]))
    if use("matching") and fg_weight == "mask" and fg_weight_gradient == "pseudo_label":
        corr = outputs["corr"]
        has_c = "ca" in corr and "ca" in theta_aff

        def label_loss(logits, partners):
            own = dict(own_logits=logits, own_weight=pseudo_label_self_weight)
            if pseudo_label_low is None:
                targets = matching_pseudo_labels(partners, threshold=pseudo_label_threshold,
                                                 sharpness=pseudo_label_sharpness, **own, **score_kwargs)
                return pseudo_label_loss(logits, targets, balanced=pseudo_label_balanced)
            targets, weights = confident_pseudo_labels(partners, low=pseudo_label_low, high=pseudo_label_threshold,
                                                       **own, **score_kwargs)
            return pseudo_label_loss(logits, targets, weights, balanced=pseudo_label_balanced)

        def labels(logits_a, logits_b, corr_ab, corr_ba, aff_ab, tps_ab, aff_ba, tps_ba, *partner_c):
            partners_a = [(corr_ba, aff_ba, tps_ba)] + ([tuple(partner_c)] if partner_c else [])
            return 0.5 * (label_loss(logits_a, partners_a) + label_loss(logits_b, [(corr_ab, aff_ab, tps_ab)]))
        partner_c = (corr["ca"], theta_aff["ca"], theta_tps["ca"]) if has_c else ()
        terms["mask_label"] = jnp.mean(jax.vmap(labels)(
            logits["a"], logits["b"], corr["ab"], corr["ba"], theta_aff["ab"], theta_tps["ab"], theta_aff["ba"],
            theta_tps["ba"], *partner_c))
    if use("cycle") and cycle_compat:
        terms["cycle"] = 0.5 * (jnp.mean(jax.vmap(cycle_loss_compat)(theta_aff["ab"], theta_aff["ba"]))
                                + jnp.mean(jax.vmap(cycle_loss_compat)(theta_aff["ba"], theta_aff["ab"])))
    elif use("cycle"):
        terms["cycle"] = jnp.mean(jax.vmap(lambda a1, t1, a2, t2: cycle_loss(a1, t1, a2, t2,
                                                                             grid_size=cycle_grid_size))(
            theta_aff["ab"], tps("ab"), theta_aff["ba"], tps("ba")))
    if use("transitivity"):
        if "bc" not in theta_aff or "ca" not in theta_aff:
            raise ValueError("total_loss: the transitivity term needs triplet outputs (directions 'bc' and 'ca')")
        terms["transitivity"] = jnp.mean(jax.vmap(
            lambda a1, t1, a2, t2, a3, t3: transitivity_loss(a1, t1, a2, t2, a3, t3, grid_size=cycle_grid_size))(
            theta_aff["ab"], tps("ab"), theta_aff["bc"], tps("bc"), theta_aff["ca"], tps("ca")))
    if use("task"):
        terms["task"] = jnp.mean(jax.vmap(
            lambda la, lb, a1, t1, a2, t2: task_loss(la, lb, a1, t1, a2, t2,
                                                     stop_gradient_target=task_stop_gradient))(
            logits["a"], logits["b"], theta_aff["ab"], tps("ab"), theta_aff["ba"], tps("ba")))
    if use("contrastive"):
        if images is None or descriptor_fn is None:
            raise ValueError("total_loss: the contrastive term needs `images` {'a', 'b'} and `descriptor_fn`")
        fg_a, bg_a = jax.vmap(masked_images)(images["a"], probs["a"])
        fg_b, bg_b = jax.vmap(masked_images)(images["b"], probs["b"])
        n = fg_a.shape[0]
        # One call of the perceptual network on all four masked batches.
        desc = descriptor_fn(jnp.concatenate([fg_a, fg_b, bg_a, bg_b], axis=0))
        d_fg_a, d_fg_b, d_bg_a, d_bg_b = (desc[i * n:(i + 1) * n] for i in range(4))
        terms["contrastive"] = jnp.mean(jax.vmap(lambda *d: contrastive_loss(*d, margin=margin))(
            d_fg_a, d_fg_b, d_bg_a, d_bg_b))
    # 'mask_label' (fg_weight_gradient='pseudo_label') is the matching term's message to the masks: same λ.
    loss = sum(weights["matching" if name == "mask_label" else name] * value for name, value in terms.items())
    return loss, terms
