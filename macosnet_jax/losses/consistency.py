"""SPEC §6.2, §6.3 and §6.5: the consistency losses of the maps, on ONE example.

Forward-backward (cycle) and triplet (transitivity) consistency of the maps themselves, and the cross-network
(task) consistency between a warp and the two masks: A's mask carried to B by T_AB must agree with B's mask.
`cycle_loss_compat` is the released code's cycle loss (affine only, pixel units), kept for fixture parity.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from macosnet_jax import geometry
from macosnet_jax.losses.maps import map_points, regular_points, safe_norm
from macosnet_jax.losses.masks import bce_with_logits, check_mask


def cycle_loss(theta_aff_ab: jax.Array, theta_tps_ab: Optional[jax.Array], theta_aff_ba: jax.Array,
               theta_tps_ba: Optional[jax.Array], *, grid_size: int = 10) -> jax.Array:
    """Forward-backward consistency (paper eq. 4), scalar in normalised units.

    ½(mean_{p∈A} ‖T_AB(T_BA(p)) − p‖ + mean_{q∈B} ‖T_BA(T_AB(q)) − q‖) over a K×K grid (K = grid_size).
    Maps are composed Aff(TPS(·)) (λ = 0); pass None for a θ_tps to use the affine map alone.
    """
    points = regular_points(grid_size)
    back_a = map_points(theta_aff_ab, theta_tps_ab, map_points(theta_aff_ba, theta_tps_ba, points))
    back_b = map_points(theta_aff_ba, theta_tps_ba, map_points(theta_aff_ab, theta_tps_ab, points))
    return 0.5 * (jnp.mean(safe_norm(back_a - points)) + jnp.mean(safe_norm(back_b - points)))


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
    return sum(jnp.mean(safe_norm(loop - points)) for loop in loops) / 3.0


def warp_mask(mask: jax.Array, theta_aff: jax.Array, theta_tps: Optional[jax.Array] = None) -> jax.Array:
    """Mask of A (H, W) sampled with T_AB onto B's grid (same size): M̃_A(q) = M_A(T_AB(q)), zero outside."""
    check_mask(mask, "mask")
    h, w = mask.shape
    grid = map_points(theta_aff, theta_tps, geometry.base_grid(h, w).reshape(-1, 2)).reshape(h, w, 2)
    return geometry.grid_sample(mask[..., None], grid)[..., 0]


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
    return bce_with_logits(target_b, mask_logits_b) + bce_with_logits(target_a, mask_logits_a)
