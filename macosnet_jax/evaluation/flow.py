"""TSS dense flow (SPEC §8): the predicted flow on B's grid, its PCK against the ground truth, Middlebury .flo files.

A dense flow on B's grid (flow = source - target pixels; out-of-image predictions are 1e10, never NaN, as the
reference writes them) is correct iff its end-point error <= 0.05 * max(H_A, W_A), over B's mask foreground.
Mirrored pairs (their ground truth is in the un-mirrored frame) are handled by the TSS driver (`flip_a`).
"""
from __future__ import annotations

import math
import pathlib
import struct

import numpy as np

from macosnet_jax import geometry
from macosnet_jax.evaluation import mapping, masks

# Out-of-image flow marker of the reference's flow writer (and of the TSS kit): a number, never NaN.
FLOW_INVALID = 1e10
FLO_MAGIC = 202021.25


def dense_flow(theta_aff, theta_tps, size_a, size_b, flip_a=False):
    """Dense flow (H_B, W_B, 2) float32 on B's pixel grid pointing into A: flow = source(A) - target(B) pixels.

    As the reference's flow writer: each B pixel centre goes through Aff(TPS(.)) (points, not the composed grid);
    predictions not strictly inside A ((-1, 1)^2 normalised, by more than geometry.GRID_TOLERANCE, so the decision
    does not depend on the last bit of a float32 map) are written as FLOW_INVALID = 1e10 in both components.
    flip_a: A was mirrored before prediction; flip the predicted source x back into the un-mirrored frame.
    """
    height_b, width_b = int(size_b[0]), int(size_b[1])
    ys, xs = np.meshgrid(np.arange(1, height_b + 1), np.arange(1, width_b + 1), indexing="ij")
    target = np.stack([xs, ys], axis=-1).reshape(-1, 2).astype(np.float64)
    mapped, source = mapping.map_points(target, theta_aff, theta_tps, size_a, size_b, flip_a)
    inside = np.asarray(geometry.inside(mapped))
    flow = np.where(inside[:, None], source - target, FLOW_INVALID)
    return flow.reshape(height_b, width_b, 2).astype(np.float32)


def flow_pck(flow_pred, flow_gt, mask_b, size_a, alpha=0.05):
    """TSS flow PCK: fraction of B's foreground pixels with ||pred - gt|| <= alpha * max(H_A, W_A) (inclusive).

    flow_pred, flow_gt: (H_B, W_B, 2) on B's grid pointing into A (pixels); mask_b: (H_B, W_B) B's foreground.
    Pixels whose ground truth is unknown (non-finite or |flow| >= 1e9, the .flo unknown marker) are excluded.
    Returns NaN if no pixel is evaluated.
    """
    flow_pred = np.asarray(flow_pred, np.float64)
    flow_gt = np.asarray(flow_gt, np.float64)
    if flow_pred.shape != flow_gt.shape or flow_pred.ndim != 3 or flow_pred.shape[-1] != 2:
        raise ValueError(f"flows must both be (H, W, 2); got {flow_pred.shape} and {flow_gt.shape}")
    valid = masks.as_binary_mask(mask_b, "mask_b")
    if valid.shape != flow_gt.shape[:2]:
        raise ValueError(f"mask_b {valid.shape} must match the flow grid {flow_gt.shape[:2]}")
    valid &= np.all(np.isfinite(flow_gt) & (np.abs(flow_gt) < 1e9), axis=-1)
    if not valid.any():
        return math.nan
    error = np.linalg.norm(flow_pred - flow_gt, axis=-1)[valid]
    return float(np.mean(error <= alpha * max(size_a[0], size_a[1])))


# Middlebury .flo files.


def write_flo(path, flow):
    """Writes flow (H, W, 2) float32 as a Middlebury .flo: magic 202021.25, width, height, then (dx, dy) per pixel."""
    flow = np.asarray(flow)
    if flow.ndim != 3 or flow.shape[-1] != 2:
        raise ValueError(f"flow must have shape (H, W, 2); got {flow.shape}")
    height, width = flow.shape[:2]
    with open(path, "wb") as f:
        f.write(struct.pack("<fii", FLO_MAGIC, width, height))
        f.write(np.ascontiguousarray(flow, dtype="<f4").tobytes())


def read_flo(path):
    """Reads a Middlebury .flo file -> (H, W, 2) float32. Raises ValueError naming the file if it is malformed."""
    data = pathlib.Path(path).read_bytes()
    if len(data) < 12:
        raise ValueError(f"{path}: not a .flo file (only {len(data)} bytes; expected a 12-byte header)")
    magic, width, height = struct.unpack("<fii", data[:12])
    if magic != np.float32(FLO_MAGIC):
        raise ValueError(f"{path}: bad .flo magic number {magic!r}; expected {FLO_MAGIC} (Middlebury flow file)")
    if width <= 0 or height <= 0:
        raise ValueError(f"{path}: invalid .flo size width={width}, height={height}")
    expected = 12 + 8 * width * height
    if len(data) != expected:
        raise ValueError(f"{path}: .flo of {width}x{height} needs {expected} bytes; the file has {len(data)}")
    return np.frombuffer(data, dtype="<f4", offset=12).reshape(height, width, 2).astype(np.float32)
