"""Beyond the paper: a colour-affinity smoothness of the masks, which pulls their boundaries onto image edges.

The matching pseudo-labels (`pseudo_labels`) say which 8×8-pixel cells hold the common object; a mask trained on
them alone is a blob that follows the cells, not the object's outline. The pairwise term here is the standard
regulariser of weakly supervised segmentation (a relaxed Potts / CRF loss on the network's probabilities, as in
Tang et al., "On Regularized Losses for Weakly-supervised CNN Segmentation", ECCV 2018): for each pixel i and
each neighbour j within a small dilated window,

    w_ij · [p_i (1 − p_j) + p_j (1 − p_i)],   w_ij = exp(−‖I_i − I_j‖² / (2σ²)),

summed over the pairs and divided by the pixel count. It is small when the mask changes only where the colour
does, so a boundary that crosses a uniformly coloured region costs more than one along an edge. Colours are RGB
in [0, 1]. Works on ONE example.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from macosnet_jax import geometry
from macosnet_jax.losses.masks import check_mask


def window_offsets(radius: int, dilation: int) -> tuple[tuple[int, int], ...]:
    """Half of the (2r+1)² − 1 offsets (dy, dx) of a dilated window, one per unordered neighbour pair."""
    if radius < 1 or dilation < 1:
        raise ValueError(f"window_offsets: radius and dilation must be >= 1; got {radius}, {dilation}")
    return tuple((dy * dilation, dx * dilation) for dy in range(0, radius + 1)
                 for dx in range(-radius, radius + 1) if dy > 0 or dx > 0)


def _inside(height: int, width: int, dy: int, dx: int) -> np.ndarray:
    """(H, W) bool constant: whether pixel i's neighbour i + (dy, dx) lies inside the image."""
    rows, cols = np.arange(height)[:, None], np.arange(width)[None, :]
    return (rows + dy >= 0) & (rows + dy < height) & (cols + dx >= 0) & (cols + dx < width)


def unnormalize_image(image: jax.Array) -> jax.Array:
    """ImageNet-normalised image (..., 3) -> RGB in [0, 1] (the inverse of `geometry.normalize_image`'s scaling)."""
    return image * geometry.IMAGENET_STD + geometry.IMAGENET_MEAN


def edge_aware_smoothness(mask: jax.Array, image: jax.Array, *, sigma: float = 0.1, radius: int = 2,
                          dilation: int = 2) -> jax.Array:
    """Σ over neighbour pairs of w_ij · [p_i (1 − p_j) + p_j (1 − p_i)], divided by H·W (scalar).

    mask: (H, W) foreground probabilities; image: (H, W, 3) RGB in [0, 1] (constant: no gradient reaches it);
    sigma: the colour kernel's width; radius, dilation: the window, neighbours at (dy, dx)·dilation for
    |dy|, |dx| <= radius (`window_offsets`). Gradient on p_i: Σ_j w_ij (1 − 2 p_j), so a pixel is pulled
    towards the mask value of its similarly coloured neighbours.
    """
    check_mask(mask, "mask")
    if image.shape != mask.shape + (3,):
        raise ValueError(f"edge_aware_smoothness: image {image.shape} must be the mask's {mask.shape} with 3 "
                         "colour channels")
    image = jax.lax.stop_gradient(image)
    height, width = mask.shape
    reach = radius * dilation
    # Every neighbour view is a full (H, W) window of the padded arrays, with the pairs that leave the image
    # weighted 0: all offsets then add up elementwise before ONE sum, which XLA fuses into one pass (and the
    # gradient's shifted views into another) instead of a slice, a product and a reduction per offset.
    mask_padded = jnp.pad(mask, reach)
    image_padded = jnp.pad(image, ((reach, reach), (reach, reach), (0, 0)))
    total = 0.0
    for dy, dx in window_offsets(radius, dilation):
        p_j = mask_padded[reach + dy:reach + dy + height, reach + dx:reach + dx + width]
        c_j = image_padded[reach + dy:reach + dy + height, reach + dx:reach + dx + width]
        weight = jnp.exp(-jnp.sum((image - c_j) ** 2, axis=-1) / (2.0 * sigma ** 2))
        weight = jnp.where(_inside(height, width, dy, dx), weight, 0.0)
        total = total + weight * (mask + p_j - 2.0 * mask * p_j)
    return jnp.sum(total) / (height * width)
