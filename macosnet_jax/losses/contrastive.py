"""SPEC §6.4: the perceptual contrastive loss of the co-segmentation masks, on ONE example.

The masks cut each image into a foreground and a background; a frozen network F (the caller's, which also stops
its gradients) describes the four cut images, and the loss pulls the two foregrounds together while pushing each
foreground away from its own background.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from macosnet_jax.losses.masks import check_mask


def masked_images(image: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(I° = M ⊙ I, Iᵇ = (1 − M) ⊙ I) for a normalised image (H, W, C) and mask probabilities (H, W).

    Applied to the ImageNet-normalised tensor, so masked-out pixels become the mean colour (value 0).
    """
    check_mask(mask, "mask")
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
