"""Reading the drivers' inputs: benchmark example dicts (the tfds feature names of docs/datasets.md) and predictions.

A predictor is a callable `(image_a uint8 (H, W, 3), image_b uint8) -> {'theta_aff' (6,), 'theta_tps' (18,),
'mask_a', 'mask_b'}` (masks None or (S, S) probabilities) such as `predict.Matcher.match`; a keypoint predictor
may return {'point_transfer': fn} instead (see `keypoints.keypoint_pair_counts`). Every accessor names the example
(`where`) in its error, so a malformed dataset says which row is wrong.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

Predictor = Callable[[np.ndarray, np.ndarray], Mapping[str, object]]


def display_name(value, names=None):
    """A category/subset feature (bytes, str, int, 0-d array) -> a display name."""
    value = np.asarray(value).item() if isinstance(value, np.ndarray) else value
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if names is not None and isinstance(value, (int, np.integer)):
        return names[int(value)]
    return str(value)


def field(example, key, where):
    """example[key]; KeyError naming the example (`where`) and the keys it has when it is missing."""
    if key not in example:
        raise KeyError(f"{where}: example has no '{key}' (has {sorted(example)})")
    return example[key]


def image_field(example, key, where):
    """example[key] as an (H, W, 3) image array; ValueError naming the example for any other shape."""
    array = np.asarray(field(example, key, where))
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"{where}: '{key}' must be an (H, W, 3) image; got shape {array.shape}")
    return array


def thetas(prediction, where):
    """A prediction's (theta_aff (6,) float32, theta_tps (18,) float32 or None); KeyError without theta_aff."""
    if "theta_aff" not in prediction:
        raise KeyError(f"{where}: the predictor returned no 'theta_aff' (returned {sorted(prediction)})")
    theta_aff = np.asarray(prediction["theta_aff"], np.float32).reshape(6)
    theta_tps = prediction.get("theta_tps")
    theta_tps = None if theta_tps is None else np.asarray(theta_tps, np.float32).reshape(18)
    return theta_aff, theta_tps


def mask_probability(prediction, key, where):
    """A prediction's mask `key` as (S, S) float32 probabilities, or None when it predicts none."""
    mask = prediction.get(key)
    if mask is None:
        return None
    mask = np.asarray(mask, np.float32)
    if mask.ndim == 3 and mask.shape[-1] == 1:
        mask = mask[..., 0]
    if mask.ndim != 2:
        raise ValueError(f"{where}: predicted '{key}' must be (S, S) probabilities; got {mask.shape}")
    return mask
