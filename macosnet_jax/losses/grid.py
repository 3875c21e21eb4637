"""SPEC §6.7: strong supervision (CNNGeo's transformed-grid loss) for synthetic warps with a known θ."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from macosnet_jax import geometry
from macosnet_jax.losses.maps import regular_points


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
