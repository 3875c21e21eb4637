"""Beyond the paper: what the matching term tells the masks (the CPU demo's addition; not in SPEC §6).

The paper's matching term −Σ_q M_B(q)·s(q), differentiated as written (fg_weight_gradient='raw'), only ever says
"more foreground", since every cell's score s(q) is ≥ 0. This module holds the two alternatives the demo uses
instead, both selected through `LossOptions.fg_weight_gradient`:
  'centered'      `matching_mask_signal`: a zero-valued term whose gradient pushes cells matched better than
                  their image's average up and the others down;
  'pseudo_label'  `matching_pseudo_labels` / `confident_pseudo_labels` + `pseudo_label_loss`: BCE of each mask
                  against labels derived from where the predicted match is the cell's best match (optionally
                  self-trained on the mask's own logits, `pseudo_label_scores`).
All functions work on ONE example; correlations are (h, w, h·w) on the labelled image's grid.
"""
from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp

from macosnet_jax.losses.inlier import check_corr, inlier_cell_scores
from macosnet_jax.losses.masks import average_pool_to, bce_per_pixel, bce_with_logits, check_mask


def standardize(x: jax.Array) -> jax.Array:
    """(x − mean)/(std + 1e-8) over all of x."""
    return (x - jnp.mean(x)) / (jnp.std(x) + 1e-8)


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
    h, w = check_corr(corr)
    weight = average_pool_to(mask_b, h, w)
    delta = weight - jax.lax.stop_gradient(weight)
    total = 0.0
    for tps in (None, theta_tps):
        scores = jax.lax.stop_gradient(inlier_cell_scores(corr, theta_aff, tps, **score_kwargs))
        total = total - jnp.mean(delta * standardize(scores))
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
        check_corr(corr)
        ratio = inlier_cell_scores(corr, theta_aff, theta_tps, **score_kwargs) / (jnp.max(corr, axis=-1) + 1e-6)
        standardized.append(standardize(ratio))
    z = standardize(sum(standardized) / len(standardized))
    if own_logits is None or own_weight == 0.0:
        return z
    check_mask(own_logits, "own_logits")
    h, w = partners[0][0].shape[:2]
    own = average_pool_to(jax.lax.stop_gradient(own_logits), h, w)
    return standardize(z + own_weight * standardize(own))


def matching_pseudo_labels(partners: Sequence[tuple], *, threshold: float = 0.5, sharpness: float = 10.0,
                           **score_kwargs) -> jax.Array:
    """Soft foreground targets (h, w) for one image's cells: σ(sharpness·(z − threshold)) of
    `pseudo_label_scores` (same partners and score_kwargs); constant: a teacher for the masks, with no gradient
    to θ or the correlations."""
    z = pseudo_label_scores(partners, **score_kwargs)
    return jax.lax.stop_gradient(jax.nn.sigmoid(sharpness * (z - threshold)))


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
    check_mask(mask_logits, "mask_logits")
    target = jax.image.resize(target_cells, mask_logits.shape, "linear")
    if weight_cells is None and not balanced:
        return bce_with_logits(target, mask_logits)
    weight = jnp.ones_like(target) if weight_cells is None else jax.image.resize(
        weight_cells, mask_logits.shape, "linear")
    per_pixel = bce_per_pixel(target, mask_logits)
    if not balanced:
        return jnp.sum(weight * per_pixel) / (jnp.sum(weight) + 1e-6)
    fg, bg = weight * target, weight * (1.0 - target)
    return 0.5 * (jnp.sum(fg * per_pixel) / (jnp.sum(fg) + 1e-6) + jnp.sum(bg * per_pixel) / (jnp.sum(bg) + 1e-6))
