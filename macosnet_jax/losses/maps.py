"""Sampling maps on points, shared by the point-based losses (cycle, transitivity, grid loss).

A map T_XY is a *sampling map* from Y's frame to X's frame (SPEC §1), given by an affine θ (6,) and optionally a
TPS θ (18,); with both, the map is the cascade's p ↦ Aff(TPS(p)). Points are (P, 2) xy in normalised
corner-aligned coordinates.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from macosnet_jax import geometry


def map_points(theta_aff: jax.Array, theta_tps: Optional[jax.Array], points: jax.Array,
               reg: float = 0.0) -> jax.Array:
    """Applies the sampling map (θ_aff (6,), θ_tps (18,) or None) to points (P, 2): Aff(TPS(p)) or Aff(p)."""
    if theta_tps is None:
        return geometry.affine_points(theta_aff, points)
    return geometry.composed_points(theta_aff, theta_tps, points, reg)


def regular_points(grid_size: int) -> jax.Array:
    """(K², 2) points of a K×K regular grid spanning [-1, 1]² (corner-aligned, both borders included)."""
    return geometry.base_grid(grid_size, grid_size).reshape(-1, 2)


def safe_norm(v: jax.Array) -> jax.Array:
    """Euclidean norm over the last axis whose gradient is 0 (not NaN) at v = 0 (an exact inverse pair)."""
    squared = jnp.sum(v * v, axis=-1)
    positive = squared > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), 0.0)
