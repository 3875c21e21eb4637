"""The batch kinds the data iterators yield and the stages read: one TypedDict per kind, its keys and shapes.

These are the agreed names between data/pipeline.py, data/warps.py and the stages (a batch is a plain dict of
numpy arrays at run time; the types document and check the keys). B: per-process batch, S: image side, K: the
padded keypoint count. Images are uint8 0..255 (normalised inside the jitted step), masks uint8 0/1, keypoints
float32 xy 1-indexed pixels with -1 where not visible.
"""
# (No `from __future__ import annotations`: TypedDict must see NotRequired itself to tell optional keys.)
from typing import NotRequired, TypedDict

import numpy as np


class PairBatch(TypedDict):
    """Pairs of one category (`pipeline.make_pair_iterator(triplets=False)`): the weak and joint stages."""
    image_a: np.ndarray            # (B, S, S, 3) uint8
    image_b: np.ndarray            # (B, S, S, 3) uint8
    category_a: np.ndarray         # (B,) int32
    category_b: np.ndarray         # (B,) int32
    index_a: np.ndarray            # (B,) int64, the example's row in the whole source
    index_b: np.ndarray            # (B,) int64
    mask_a: NotRequired[np.ndarray]        # (B, S, S) uint8, when the source has masks
    mask_b: NotRequired[np.ndarray]
    keypoints_a: NotRequired[np.ndarray]   # (B, K, 2) float32, when the source has keypoints
    keypoints_b: NotRequired[np.ndarray]
    visible_a: NotRequired[np.ndarray]     # (B, K) bool
    visible_b: NotRequired[np.ndarray]


class TripletBatch(PairBatch):
    """Triplets of one category (`make_pair_iterator(triplets=True)`): the joint stage with transitivity."""
    image_c: np.ndarray
    category_c: np.ndarray
    index_c: np.ndarray
    mask_c: NotRequired[np.ndarray]
    keypoints_c: NotRequired[np.ndarray]
    visible_c: NotRequired[np.ndarray]


class WarpPairBatch(TypedDict):
    """Strong pairs with a known map (`warps.make_warp_iterator` / `synthetic_warp_batch`): image_b(q) =
    image_a(T_θ(q))."""
    image_a: np.ndarray            # (B, S, S, 3) uint8
    image_b: np.ndarray            # (B, S, S, 3) uint8
    theta: np.ndarray              # (B, 6) affine or (B, 18) TPS, float32
    index: NotRequired[np.ndarray]         # (B,) int64, the source image's row (added by make_warp_iterator)
    mask_a: NotRequired[np.ndarray]        # (B, S, S) uint8, when the source has masks
    mask_b: NotRequired[np.ndarray]
    keypoints_a: NotRequired[np.ndarray]   # (B, K, 2) float32, when the source has keypoints
    keypoints_b: NotRequired[np.ndarray]
    visible_a: NotRequired[np.ndarray]     # (B, K) bool
    visible_b: NotRequired[np.ndarray]


class StrongBatch(TypedDict):
    """The strong stage's step: an affine and a TPS `WarpPairBatch` side by side, keys prefixed by the kind."""
    affine_image_a: np.ndarray
    affine_image_b: np.ndarray
    affine_theta: np.ndarray       # (B, 6)
    tps_image_a: np.ndarray
    tps_image_b: np.ndarray
    tps_theta: np.ndarray          # (B, 18)


def declared_keys(kind: type) -> tuple[frozenset, frozenset]:
    """(required, optional) keys of a batch kind."""
    return kind.__required_keys__, kind.__optional_keys__
