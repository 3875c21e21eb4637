"""Co-segmentation on one image (SPEC §8): ground truth binarised, prediction upsampled and thresholded, P and J.

The sigmoid mask sigma(M) (S, S) is upsampled (bilinear, corner-aligned) to the ground truth's size, foreground =
p > 0.5; precision P = fraction of pixels labelled correctly, Jaccard J = |pred & gt| / |pred | gt|. Images with an
empty ground truth count in P but not in J (J is NaN). Aggregation over images and classes is the drivers' job.
"""
from __future__ import annotations

import math

import numpy as np

from macosnet_jax.evaluation import mapping


def as_binary_mask(mask, name="mask"):
    """A ground-truth mask (H, W) or (H, W, 1) -> bool. bool as is; integers with values > 1 (0/255 PNGs) at >= 128;
    anything else (0/1, probabilities) at > 0.5."""
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[-1] == 1:
        mask = mask[..., 0]
    if mask.ndim != 2:
        raise ValueError(f"{name} must have shape (H, W) or (H, W, 1); got {mask.shape}")
    if mask.dtype == bool:
        return mask.copy()
    if np.issubdtype(mask.dtype, np.integer) and mask.size and mask.max() > 1:
        return mask >= 128
    return mask > 0.5


def upsample_mask(probability, height, width):
    """Mask probabilities (S, S) -> (height, width) by corner-aligned bilinear resampling (float32)."""
    probability = np.asarray(probability, np.float32)
    if probability.ndim != 2:
        raise ValueError(f"mask probabilities must have shape (S, S); got {probability.shape}")
    return mapping.resample(probability[..., None], height, width)[..., 0]


def predicted_foreground(probability, height, width, threshold=0.5):
    """sigma(M) (S, S) -> boolean foreground (height, width): upsample first, then threshold (> 0.5)."""
    return upsample_mask(probability, height, width) > threshold


def precision_jaccard(pred, gt):
    """(P, J) for one image: P = fraction of pixels labelled correctly; J = |pred & gt| / |pred | gt|.

    pred, gt: (H, W). J is NaN when the ground truth is empty (such images count in P only).
    """
    pred = as_binary_mask(pred, "pred")
    gt = as_binary_mask(gt, "gt")
    if pred.shape != gt.shape:
        raise ValueError(f"predicted mask {pred.shape} and ground truth {gt.shape} must have the same size")
    precision = float(np.mean(pred == gt))
    if not gt.any():
        return precision, math.nan
    jaccard = float(np.sum(pred & gt) / np.sum(pred | gt))
    return precision, jaccard


def save_mask_png(path, mask):
    """Saves a boolean mask (H, W) as an 8-bit PNG with values 0 and 255."""
    from PIL import Image  # local: only the writers need Pillow

    mask = as_binary_mask(mask)
    Image.fromarray((mask * 255).astype(np.uint8)).save(path)
