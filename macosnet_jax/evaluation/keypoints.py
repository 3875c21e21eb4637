"""Keypoint PCK on one pair (SPEC §8) and its reference-length conventions; B's keypoints transferred into A.

B's keypoints are mapped into A, the *comparison image*, by the cascade's final sampling map p -> Aff(TPS(p)) and
compared with A's keypoints. A point is correct iff its distance is <= alpha * L (inclusive). The reference length L
depends on a convention, and published numbers are only comparable under the same one, so every number carries its
convention's name:
  `img224`    both images' keypoints rescaled to 224x224 (and the transfer done in that frame), L = 224
              (SCNet / weakalign / MaCoSNet "scnet" procedure: PF-PASCAL, the paper's PF-WILLOW numbers);
  `kp_extent` L = max side of the tight box around A's valid keypoints in original pixels ("pf" procedure; later
              papers call this "bbox" on PF-WILLOW). `compat=True` reproduces the bug of codebases that take the
              box over the -1-padded keypoint array (the padding point (-1, -1) enters the box, inflating L);
  `bbox`      L = max(x2 - x1, y2 - y1) of A's object box (SPair-71k).
Points are (P, 2) with [..., 0] = x, 1-indexed pixels; the metrics are numpy float64.
"""
from __future__ import annotations

import math

import numpy as np

from macosnet_jax.evaluation import mapping

CONVENTIONS = ("img224", "kp_extent", "bbox")
IMG224_SIZE = 224.0
PADDING_VALUE = -1.0
CONVENTION_DESCRIPTIONS = {
    "img224": "img224 (scnet): keypoints of both images rescaled to 224x224, L = 224",
    "kp_extent": "kp_extent (pf): L = max side of the box around A's valid keypoints, original pixels",
    "kp_extent_compat": "kp_extent_compat: as kp_extent but the -1 padding enters the box (bug of some codebases)",
    "bbox": "bbox (SPair-71k): L = max(x2 - x1, y2 - y1) of A's object box, original pixels",
}


# --------------------------------------------------------------------------------------------------------------
# PCK on one pair.


def as_points(points, name):
    """points -> (P, 2) float64 numpy; ValueError naming `name` for any other shape."""
    points = np.asarray(points, np.float64)
    if points.ndim != 2 or points.shape[-1] != 2:
        raise ValueError(f"{name} must have shape (P, 2) with [..., 0] = x; got {points.shape}")
    return points


def pck(pred_points, true_points, alpha, reference_length):
    """Fraction of points with ||pred - true|| <= alpha * reference_length (inclusive).

    pred_points, true_points: (P, 2) valid points only (padding removed). Returns a Python float, NaN when P = 0
    (such pairs are dropped from dataset means, as the reference drops them).
    """
    correct, total = pck_counts(pred_points, true_points, alpha, reference_length)
    return correct / total if total else math.nan


def pck_counts(pred_points, true_points, alpha, reference_length):
    """(number of correct points, number of points) for one pair; see `pck`."""
    pred = as_points(pred_points, "pred_points")
    true = as_points(true_points, "true_points")
    if pred.shape != true.shape:
        raise ValueError(f"pred_points {pred.shape} and true_points {true.shape} must have the same shape")
    distance = np.linalg.norm(pred - true, axis=-1)
    return int(np.sum(distance <= alpha * float(reference_length))), int(pred.shape[0])


def strip_padding(points, padding=PADDING_VALUE):
    """Valid rows of a padded (N, 2) keypoint array: rows where neither coordinate equals the padding value."""
    points = as_points(points, "points")
    valid = np.all(points != padding, axis=-1)
    return points[valid]


# Reference lengths, one per convention.


def img224_points(points, height, width):
    """Keypoints (P, 2) of an image of size (height, width) rescaled into the 224x224 frame (x*224/w, y*224/h)."""
    points = as_points(points, "points")
    return points * np.array([IMG224_SIZE / width, IMG224_SIZE / height])


def kp_extent_length(points_a, compat=False, padded_length=20):
    """L of `kp_extent`: max(x_max - x_min, y_max - y_min) over A's valid keypoints (P, 2), original pixels.

    compat=True reproduces codebases that take the box over the -1-padded array (padded to `padded_length` points):
    whenever padding exists the point (-1, -1) joins the box, which inflates L. Label results accordingly.
    """
    points = as_points(points_a, "points_a")
    if points.shape[0] == 0:
        raise ValueError("kp_extent needs at least one valid keypoint of image A")
    if compat and points.shape[0] < padded_length:
        points = np.concatenate([points, [[PADDING_VALUE, PADDING_VALUE]]], axis=0)
    extent = points.max(axis=0) - points.min(axis=0)
    return float(extent.max())


def bbox_length(bbox_a):
    """L of `bbox`: max(x2 - x1, y2 - y1) of A's object box (4,) = (x1, y1, x2, y2)."""
    box = np.asarray(bbox_a, np.float64).reshape(-1)
    if box.shape != (4,):
        raise ValueError(f"bbox must be (x1, y1, x2, y2); got shape {np.shape(bbox_a)}")
    return float(max(box[2] - box[0], box[3] - box[1]))


# --------------------------------------------------------------------------------------------------------------
# Point transfer and the count of one pair under a convention.


def transfer_points(points_b, theta_aff, theta_tps, size_a, size_b, flip_a=False):
    """B's keypoints (P, 2) 1-indexed pixels -> predicted positions in A's pixels by p -> Aff(TPS(p)).

    size_a, size_b: (height, width). theta_tps None -> affine only. TPS regularisation is 0 at evaluation.
    flip_a: A was mirrored before prediction; the predicted normalised x is negated to return to A's frame.
    Returns (P, 2) float64.
    """
    points_b = as_points(points_b, "points_b")
    return mapping.map_points(points_b, theta_aff, theta_tps, size_a, size_b, flip_a)[1]


def keypoint_pair_counts(points_a, points_b, theta_aff, theta_tps, size_a, size_b, convention, alphas,
                         bbox_a=None, compat=False, point_transfer=None):
    """Correct counts (len(alphas),) and number of keypoints for one pair under a convention.

    points_a, points_b: (P, 2) corresponding valid keypoints of A (comparison image) and B, 1-indexed pixels of the
    original images of sizes size_a, size_b (height, width). Under img224 both point sets and both sizes are moved
    into the 224x224 frame *before* the transfer, as the reference does (this changes the predicted points slightly).
    point_transfer: optional `(points_b (P, 2), size_a, size_b) -> points in A (P, 2)` used instead of the thetas
    (a matcher that predicts points directly, e.g. zeroshot's nearest-neighbour transfer).
    """
    points_a, points_b = as_points(points_a, "points_a"), as_points(points_b, "points_b")
    if points_a.shape != points_b.shape:
        raise ValueError(f"keypoints of A {points_a.shape} and B {points_b.shape} must correspond one to one")
    if convention == "img224":
        points_a = img224_points(points_a, *size_a)
        points_b = img224_points(points_b, *size_b)
        size_a = size_b = (IMG224_SIZE, IMG224_SIZE)
        length = IMG224_SIZE
    elif convention == "kp_extent":
        length = kp_extent_length(points_a, compat=compat)
    elif convention == "bbox":
        if bbox_a is None:
            raise ValueError("the bbox convention needs A's object box (x1, y1, x2, y2)")
        length = bbox_length(bbox_a)
    else:
        raise ValueError(f"unknown PCK convention {convention!r}; expected one of {CONVENTIONS}")
    if point_transfer is not None:
        pred = np.asarray(point_transfer(points_b, size_a, size_b), np.float64)
    else:
        pred = transfer_points(points_b, theta_aff, theta_tps, size_a, size_b)
    counts = [pck_counts(pred, points_a, a, length)[0] for a in alphas]
    return np.array(counts), points_a.shape[0]
