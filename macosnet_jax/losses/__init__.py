"""The MaCoSNet training losses of SPEC §6, as pure functions on ONE example (vmap and mean over the batch).

Conventions (SPEC §1): a map T_XY is a *sampling map* from Y's frame to X's frame, given by an affine θ (6,)
and optionally a TPS θ (18,); with both, the map is the cascade's p ↦ Aff(TPS(p)). Points are (P, 2) xy in
normalised corner-aligned coordinates; correlations are (h, w, h·w) on the second image's grid with channel
k = x_A·h + y_A; masks are (H, W) probabilities or logits at image resolution.

One module per family:
  inlier         §6.1 `inlier_score` / `matching_loss`: foreground-guided weak inlier count (fixture parity)
  consistency    §6.2 `cycle_loss` / `cycle_loss_compat`, §6.3 `transitivity_loss`, §6.5 `task_loss`
  contrastive    §6.4 `contrastive_loss`, `masked_images` (descriptors come from the caller)
  grid           §6.7 `grid_loss`: strong supervision (CNNGeo)
  pseudo_labels  beyond the paper: the centred mask signal and matching pseudo-labels (the CPU demo's)
  edges          beyond the paper: `edge_aware_smoothness`, a colour-affinity (relaxed Potts) term on the masks
  objective      §6.6 `LossOptions` (every option and default), the term table `TERMS` and `total_loss`
  maps, masks    the point maps and mask helpers they share
"""
from macosnet_jax.losses.consistency import (_compat_points, cycle_loss, cycle_loss_compat, task_loss,
                                             transitivity_loss, warp_mask)
from macosnet_jax.losses.contrastive import contrastive_loss, masked_images
from macosnet_jax.losses.edges import edge_aware_smoothness
from macosnet_jax.losses.grid import grid_loss
from macosnet_jax.losses.inlier import (OFFSET_FACTOR, foreground_weight, inlier_cell_scores, inlier_mask,
                                        inlier_sampling_grid, inlier_score, matching_loss)
from macosnet_jax.losses.maps import map_points, regular_points
from macosnet_jax.losses.masks import average_pool_to
from macosnet_jax.losses.objective import (DEFAULT_WEIGHTS, TERMS, WEIGHT_NAMES, LossOptions, Term, TermInputs,
                                           total_loss)
from macosnet_jax.losses.pseudo_labels import (confident_pseudo_labels, matching_mask_signal,
                                               matching_pseudo_labels, pseudo_label_loss, pseudo_label_scores)

__all__ = [
    "DEFAULT_WEIGHTS", "LossOptions", "OFFSET_FACTOR", "TERMS", "Term", "TermInputs", "WEIGHT_NAMES",
    "average_pool_to", "confident_pseudo_labels", "contrastive_loss", "cycle_loss", "cycle_loss_compat",
    "edge_aware_smoothness", "foreground_weight", "grid_loss", "inlier_cell_scores", "inlier_mask", "inlier_sampling_grid", "inlier_score", "map_points",
    "masked_images", "matching_loss", "matching_mask_signal", "matching_pseudo_labels", "pseudo_label_loss",
    "pseudo_label_scores", "regular_points", "task_loss", "total_loss", "transitivity_loss", "warp_mask",
]
