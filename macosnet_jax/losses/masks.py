"""Mask maps of ONE example, shared by the mask-facing losses: shape check, pooling to the feature grid, BCE.

Masks are (H, W) probabilities or logits at image resolution; the feature grid is (h, w) with H, W multiples of
h, w.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def check_mask(mask: jax.Array, name: str) -> None:
    if mask.ndim != 2:
        raise ValueError(f"{name} must be an (H, W) map for one example; got shape {mask.shape}")


def average_pool_to(mask: jax.Array, height: int, width: int) -> jax.Array:
    """(H, W) -> (height, width) by block averaging; H, W must be multiples of the target size."""
    check_mask(mask, "mask")
    big_h, big_w = mask.shape
    if big_h % height or big_w % width:
        raise ValueError(f"cannot average-pool a {big_h}x{big_w} mask to the {height}x{width} feature grid: "
                         "the image size must be a multiple of the grid size")
    return mask.reshape(height, big_h // height, width, big_w // width).mean(axis=(1, 3))


def bce_per_pixel(target: jax.Array, logits: jax.Array) -> jax.Array:
    """−[t log σ(l) + (1 − t) log(1 − σ(l))] per pixel, computed stably from logits."""
    return jax.nn.softplus(logits) - target * logits


def bce_with_logits(target: jax.Array, logits: jax.Array) -> jax.Array:
    """Mean over pixels of `bce_per_pixel`."""
    return jnp.mean(bce_per_pixel(target, logits))
