"""Evaluation on the five benchmarks of the paper (SPEC §8): keypoint PCK, TSS flow PCK, co-segmentation P/J.

What and why:
- Keypoint transfer (PF-PASCAL, PF-WILLOW, SPair-71k, synthetic pairs): B's keypoints are mapped into A, the
  *comparison image*, by the cascade's final sampling map p -> Aff(TPS(p)) and compared with A's keypoints. A
  point is correct iff its distance is <= alpha * L (inclusive). The reference length L depends on a convention,
  and published numbers are only comparable under the same one, so every number carries its convention's name:
    `img224`    both images' keypoints rescaled to 224x224 (and the transfer done in that frame), L = 224
                (SCNet / weakalign / MaCoSNet "scnet" procedure: PF-PASCAL, the paper's PF-WILLOW numbers);
    `kp_extent` L = max side of the tight box around A's valid keypoints in original pixels ("pf" procedure; later
                papers call this "bbox" on PF-WILLOW). `compat=True` reproduces the bug of codebases that take
                the box over the -1-padded keypoint array (the padding point (-1, -1) enters the box, inflating L);
    `bbox`      L = max(x2 - x1, y2 - y1) of A's object box (SPair-71k).
- TSS: a dense flow on B's grid (flow = source - target pixels; out-of-image predictions are 1e10, never NaN, as
  the reference writes them), correct iff end-point error <= 0.05 * max(H_A, W_A) over B's mask foreground.
  Mirrored pairs: the ground truth is in the un-mirrored frame, so predictions are flipped back by default; the
  released behaviour (no flip back) is `compat` and is reported beside it.
- Co-segmentation: sigmoid mask upsampled (bilinear, corner-aligned) to the ground-truth size, foreground = p > 0.5;
  precision P = fraction of pixels labelled correctly, Jaccard J = |pred & gt| / |pred | gt|; per image, mean per
  class, then mean over classes. Images with an empty ground truth count in P but not in J.

Metrics run on the host in numpy float64 on one example at a time; only the point maps use `geometry` (jnp).
Drivers take any iterable of example dicts (the tfds feature names of DATASETS.md) and a predictor, i.e. a callable
`(image_a uint8 (H, W, 3), image_b uint8) -> {'theta_aff' (6,), 'theta_tps' (18,), 'mask_a', 'mask_b'}` (masks None
or (S, S) probabilities) such as `predict.Matcher.match`, and return `ResultTable`s rendered as text and JSON.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import pathlib
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from macosnet_jax import errors, geometry

CONVENTIONS = ("img224", "kp_extent", "bbox")
IMG224_SIZE = 224.0
PADDING_VALUE = -1.0
# Out-of-image flow marker of the reference's flow writer (and of the TSS kit): a number, never NaN.
FLOW_INVALID = 1e10
FLO_MAGIC = 202021.25
TSS_SUBSETS = ("FG3DCar", "JODS", "PASCAL")
CONVENTION_DESCRIPTIONS = {
    "img224": "img224 (scnet): keypoints of both images rescaled to 224x224, L = 224",
    "kp_extent": "kp_extent (pf): L = max side of the box around A's valid keypoints, original pixels",
    "kp_extent_compat": "kp_extent_compat: as kp_extent but the -1 padding enters the box (bug of some codebases)",
    "bbox": "bbox (SPair-71k): L = max(x2 - x1, y2 - y1) of A's object box, original pixels",
}

_grid_sample = jax.jit(geometry.grid_sample)

Predictor = Callable[[np.ndarray, np.ndarray], Mapping[str, object]]


# --------------------------------------------------------------------------------------------------------------
# PCK on one pair.


def _as_points(points, name):
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
    pred = _as_points(pred_points, "pred_points")
    true = _as_points(true_points, "true_points")
    if pred.shape != true.shape:
        raise ValueError(f"pred_points {pred.shape} and true_points {true.shape} must have the same shape")
    distance = np.linalg.norm(pred - true, axis=-1)
    return int(np.sum(distance <= alpha * float(reference_length))), int(pred.shape[0])


def strip_padding(points, padding=PADDING_VALUE):
    """Valid rows of a padded (N, 2) keypoint array: rows where neither coordinate equals the padding value."""
    points = _as_points(points, "points")
    valid = np.all(points != padding, axis=-1)
    return points[valid]


# Reference lengths, one per convention.


def img224_points(points, height, width):
    """Keypoints (P, 2) of an image of size (height, width) rescaled into the 224x224 frame (x*224/w, y*224/h)."""
    points = _as_points(points, "points")
    return points * np.array([IMG224_SIZE / width, IMG224_SIZE / height])


def kp_extent_length(points_a, compat=False, padded_length=20):
    """L of `kp_extent`: max(x_max - x_min, y_max - y_min) over A's valid keypoints (P, 2), original pixels.

    compat=True reproduces codebases that take the box over the -1-padded array (padded to `padded_length` points):
    whenever padding exists the point (-1, -1) joins the box, which inflates L. Label results accordingly.
    """
    points = _as_points(points_a, "points_a")
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
# Point transfer and flow.


def _bucket(n):
    """Padded length for n points: a power of two >= 64, so a whole dataset compiles only a handful of shapes."""
    return max(64, 1 << max(0, int(n) - 1).bit_length())


@functools.partial(jax.jit, static_argnames="use_tps")
def _map_pixels(points_b, theta_aff, theta_tps, size_a, size_b, flip_a, use_tps):
    """B pixels (N, 2) -> (normalised positions in A (N, 2), A pixels (N, 2)); sizes (2,) = (height, width)."""
    normalized = geometry.pixels_to_normalized(points_b, size_b[0], size_b[1])
    if use_tps:
        mapped = geometry.composed_points(theta_aff, theta_tps, normalized)
    else:
        mapped = geometry.affine_points(theta_aff, normalized)
    mapped = jnp.where(flip_a, mapped * jnp.array([-1.0, 1.0]), mapped)
    return mapped, geometry.normalized_to_pixels(mapped, size_a[0], size_a[1])


def _map_points(points_b, theta_aff, theta_tps, size_a, size_b, flip_a):
    """Pads points_b (P, 2) to a bucket, runs the jitted map, returns (normalised (P, 2), pixels (P, 2)) numpy."""
    count = points_b.shape[0]
    padded = np.zeros((_bucket(count), 2), np.float32)
    padded[:count] = points_b
    use_tps = theta_tps is not None
    theta_tps = np.asarray(theta_tps if use_tps else geometry.IDENTITY_TPS, np.float32).reshape(18)
    mapped, pixels = _map_pixels(padded, np.asarray(theta_aff, np.float32).reshape(6), theta_tps,
                                 np.asarray(size_a[:2], np.float32), np.asarray(size_b[:2], np.float32),
                                 bool(flip_a), use_tps=use_tps)
    return np.asarray(mapped)[:count], np.asarray(pixels, np.float64)[:count]


def transfer_points(points_b, theta_aff, theta_tps, size_a, size_b, flip_a=False):
    """B's keypoints (P, 2) 1-indexed pixels -> predicted positions in A's pixels by p -> Aff(TPS(p)).

    size_a, size_b: (height, width). theta_tps None -> affine only. TPS regularisation is 0 at evaluation.
    flip_a: A was mirrored before prediction; the predicted normalised x is negated to return to A's frame.
    Returns (P, 2) float64.
    """
    points_b = _as_points(points_b, "points_b")
    return _map_points(points_b, theta_aff, theta_tps, size_a, size_b, flip_a)[1]


def dense_flow(theta_aff, theta_tps, size_a, size_b, flip_a=False):
    """Dense flow (H_B, W_B, 2) float32 on B's pixel grid pointing into A: flow = source(A) - target(B) pixels.

    As the reference's flow writer: each B pixel centre goes through Aff(TPS(.)) (points, not the composed grid);
    predictions not strictly inside A ((-1, 1)^2 normalised) are written as FLOW_INVALID = 1e10 in both components.
    flip_a: A was mirrored before prediction; flip the predicted source x back into the un-mirrored frame.
    """
    height_b, width_b = int(size_b[0]), int(size_b[1])
    ys, xs = np.meshgrid(np.arange(1, height_b + 1), np.arange(1, width_b + 1), indexing="ij")
    target = np.stack([xs, ys], axis=-1).reshape(-1, 2).astype(np.float64)
    mapped, source = _map_points(target, theta_aff, theta_tps, size_a, size_b, flip_a)
    inside = np.all((mapped > -1.0) & (mapped < 1.0), axis=-1)
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
    valid = as_binary_mask(mask_b, "mask_b")
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


# --------------------------------------------------------------------------------------------------------------
# Co-segmentation on one image.


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
    # geometry.resize_bilinear = grid_sample at the base grid; the grid is flattened and padded to a bucket so
    # that ground-truth masks of many sizes share a few compiled shapes.
    height, width = int(height), int(width)
    grid = np.asarray(geometry.base_grid(height, width)).reshape(-1, 2)
    padded = np.zeros((1, _bucket(grid.shape[0]), 2), np.float32)
    padded[0, : grid.shape[0]] = grid
    sampled = np.asarray(_grid_sample(probability[..., None], padded))
    return sampled[0, : grid.shape[0], 0].reshape(height, width)


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


# --------------------------------------------------------------------------------------------------------------
# Result tables.


@dataclasses.dataclass
class ResultTable:
    """Per-class results and summary rows, with the convention that produced them.

    rows: ordered {row name: {column: value}}; the per-class rows first, then `summary_rows` (e.g. 'mean');
    counts: {row name: number of evaluated items}. Values are floats (NaN where undefined).
    """

    title: str
    convention: str
    columns: list[str]
    rows: dict[str, dict[str, float]]
    counts: dict[str, int]
    summary_rows: list[str]
    notes: list[str] = dataclasses.field(default_factory=list)

    def to_json(self):
        """A JSON-serialisable dict (NaN becomes None)."""

        def clean(value):
            return None if value is None or (isinstance(value, float) and math.isnan(value)) else value

        return {
            "title": self.title,
            "convention": self.convention,
            "columns": list(self.columns),
            "rows": {name: {c: clean(row.get(c)) for c in self.columns} for name, row in self.rows.items()},
            "counts": dict(self.counts),
            "summary_rows": list(self.summary_rows),
            "notes": list(self.notes),
        }

    def to_text(self, classes_as_columns=False, digits=3):
        """Plain-text table; classes as rows, or as columns like the paper's tables (one row per metric)."""
        fmt = lambda v: "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"
        names = list(self.rows)
        if classes_as_columns:
            header = ["metric"] + names
            body = [[column] + [fmt(self.rows[n].get(column)) for n in names] for column in self.columns]
            body.append(["n"] + [str(self.counts.get(n, "")) for n in names])
        else:
            header = ["class"] + list(self.columns) + ["n"]
            body = [[n] + [fmt(self.rows[n].get(c)) for c in self.columns] + [str(self.counts.get(n, ""))]
                    for n in names]
        widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
        line = lambda r: "  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(r, widths)))
        rule = "-" * len(line(header))
        out = [self.title, f"convention: {self.convention}", rule, line(header), rule]
        for row in body:
            if not classes_as_columns and row[0] in self.summary_rows and out[-1] != rule:
                out.append(rule)
            out.append(line(row))
        out.append(rule)
        out.extend(f"note: {n}" for n in self.notes)
        return "\n".join(out)


def write_tables(tables, out_dir, stem="results"):
    """Writes {name: ResultTable} as `<stem>.txt` (all tables) and `<stem>.json` into out_dir; returns the paths."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text_path, json_path = out_dir / f"{stem}.txt", out_dir / f"{stem}.json"
    text_path.write_text("\n\n".join(t.to_text() for t in tables.values()) + "\n")
    json_path.write_text(json.dumps({k: t.to_json() for k, t in tables.items()}, indent=1))
    return text_path, json_path


def _ordered(groups, names=None):
    """Class rows in the dataset's order (the order of `names`, as the paper's tables), else alphabetical."""
    rank = {n: i for i, n in enumerate(names or ())}
    return dict(sorted(groups.items(), key=lambda item: (rank.get(item[0], len(rank)), item[0])))


def _nanmean(values):
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


# --------------------------------------------------------------------------------------------------------------
# Dataset drivers.


def _name(value, names=None):
    """A category/subset feature (bytes, str, int, 0-d array) -> a display name."""
    value = np.asarray(value).item() if isinstance(value, np.ndarray) else value
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if names is not None and isinstance(value, (int, np.integer)):
        return names[int(value)]
    return str(value)


def _file_stem(name):
    """A pair id usable as a file name (ids such as 'PASCAL/pair01' must not create folders)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _field(example, key, where):
    if key not in example:
        raise KeyError(f"{where}: example has no '{key}' (has {sorted(example)})")
    return example[key]


def _image(example, key, where):
    image = np.asarray(_field(example, key, where))
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"{where}: '{key}' must be an (H, W, 3) image; got shape {image.shape}")
    return image


def _thetas(prediction, where):
    if "theta_aff" not in prediction:
        raise KeyError(f"{where}: the predictor returned no 'theta_aff' (returned {sorted(prediction)})")
    theta_aff = np.asarray(prediction["theta_aff"], np.float32).reshape(6)
    theta_tps = prediction.get("theta_tps")
    theta_tps = None if theta_tps is None else np.asarray(theta_tps, np.float32).reshape(18)
    return theta_aff, theta_tps


class _KeypointScores:
    """Per-class accumulator of (correct, total) per pair for each (table, alpha)."""

    def __init__(self, tables, alphas):
        self.tables, self.alphas = list(tables), list(alphas)
        self.pairs = {t: {} for t in self.tables}  # table -> class -> list of (correct per alpha, total)

    def add(self, table, category, correct, total):
        self.pairs[table].setdefault(category, []).append((np.asarray(correct), total))

    def table(self, name, title, category_names=None):
        columns = [f"PCK@{a:g}" for a in self.alphas] + [f"PCK@{a:g} per-kp" for a in self.alphas]
        rows, counts = {}, {}
        groups = _ordered(self.pairs[name], category_names)
        everything = [p for pairs in groups.values() for p in pairs]
        for category, pairs in list(groups.items()) + [("all", everything)]:
            correct = np.stack([c for c, _ in pairs]) if pairs else np.zeros((0, len(self.alphas)))
            totals = np.array([t for _, t in pairs], np.float64)
            row = {}
            for i, a in enumerate(self.alphas):
                row[f"PCK@{a:g}"] = float(np.mean(correct[:, i] / totals)) if pairs else math.nan
                row[f"PCK@{a:g} per-kp"] = float(correct[:, i].sum() / totals.sum()) if pairs else math.nan
            rows[category], counts[category] = row, len(pairs)
        notes = ["PCK@a: mean over pairs of the fraction of keypoints within a*L (inclusive); "
                 "per-kp: total correct / total keypoints; 'all' = over all pairs (not the mean of classes)"]
        return ResultTable(title, CONVENTION_DESCRIPTIONS[name], columns, rows, counts, ["all"], notes)


def keypoint_pair_counts(points_a, points_b, theta_aff, theta_tps, size_a, size_b, convention, alphas,
                         bbox_a=None, compat=False, point_transfer=None):
    """Correct counts (len(alphas),) and number of keypoints for one pair under a convention.

    points_a, points_b: (P, 2) corresponding valid keypoints of A (comparison image) and B, 1-indexed pixels of the
    original images of sizes size_a, size_b (height, width). Under img224 both point sets and both sizes are moved
    into the 224x224 frame *before* the transfer, as the reference does (this changes the predicted points slightly).
    point_transfer: optional `(points_b (P, 2), size_a, size_b) -> points in A (P, 2)` used instead of the thetas
    (a matcher that predicts points directly, e.g. zeroshot's nearest-neighbour transfer).
    """
    points_a, points_b = _as_points(points_a, "points_a"), _as_points(points_b, "points_b")
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


def _keypoint_tables_for(conventions, compat_kp_extent):
    names = list(conventions)
    for c in names:
        if c not in CONVENTIONS:
            raise ValueError(f"unknown PCK convention {c!r}; expected one of {CONVENTIONS}")
    if compat_kp_extent:
        names.append("kp_extent_compat")
    return names


def _score_keypoint_example(scores, example, prediction, where, category_names):
    points_a = _as_points(_field(example, "keypoints_a", where), f"{where} keypoints_a")
    points_b = _as_points(_field(example, "keypoints_b", where), f"{where} keypoints_b")
    if points_a.shape[0] == 0:
        return False  # nothing to score: dropped like the reference's NaN pairs
    size_a = np.asarray(_field(example, "image_a", where)).shape[:2]
    size_b = np.asarray(_field(example, "image_b", where)).shape[:2]
    point_transfer = prediction.get("point_transfer")
    theta_aff, theta_tps = (None, None) if point_transfer is not None else _thetas(prediction, where)
    category = _name(example.get("category", "all"), category_names)
    for name in scores.tables:
        convention = "kp_extent" if name == "kp_extent_compat" else name
        bbox = example.get("bbox_a") if convention == "bbox" else None
        if convention == "bbox" and bbox is None:
            raise KeyError(f"{where}: the bbox convention needs 'bbox_a' in the example")
        correct, total = keypoint_pair_counts(points_a, points_b, theta_aff, theta_tps, size_a, size_b, convention,
                                              scores.alphas, bbox_a=bbox, compat=name == "kp_extent_compat",
                                              point_transfer=point_transfer)
        scores.add(name, category, correct, total)
    return True


def evaluate_keypoints(examples: Iterable[Mapping], predictor: Predictor, *, dataset="PF-PASCAL",
                       conventions=("img224", "kp_extent"), alphas=(0.05, 0.1, 0.15), compat_kp_extent=False,
                       category_names=None):
    """Keypoint-transfer PCK over a pair dataset (PF-PASCAL, PF-WILLOW; SPair with conventions=('bbox',)).

    examples: dicts with 'image_a', 'image_b' (uint8 (H, W, 3), original size), 'keypoints_a', 'keypoints_b'
    ((N, 2) 1-indexed pixels, padding removed), 'category', and 'bbox_a' for the bbox convention.
    predictor: (image_a, image_b) -> {'theta_aff', 'theta_tps', ...} or {'point_transfer': callable} (see
      `keypoint_pair_counts`); B's keypoints are transferred into A.
    category_names: maps integer categories to names. compat_kp_extent adds the labelled '-1 padding' table.
    Returns {table name: ResultTable} (one per convention: PCK per class, 'all' over pairs; per-image and
    per-keypoint means for each alpha).
    """
    scores = _KeypointScores(_keypoint_tables_for(conventions, compat_kp_extent), alphas)
    for index, example in enumerate(examples):
        where = f"{dataset} example {index} ({_name(example.get('pair_id', index))})"
        prediction = predictor(_image(example, "image_a", where), _image(example, "image_b", where))
        _score_keypoint_example(scores, example, prediction, where, category_names)
    return {name: scores.table(name, f"{dataset} keypoint transfer PCK", category_names) for name in scores.tables}


class _MaskScores:
    """Per-class accumulator of per-image (P, J)."""

    def __init__(self):
        self.items = {}

    def add(self, category, precision, jaccard):
        self.items.setdefault(category, []).append((precision, jaccard))

    def table(self, title, convention, extra_notes=(), category_names=None):
        rows, counts = {}, {}
        for category, items in _ordered(self.items, category_names).items():
            rows[category] = {"P": float(np.mean([p for p, _ in items])), "J": _nanmean([j for _, j in items])}
            counts[category] = len(items)
        rows["mean"] = {"P": _nanmean([r["P"] for r in rows.values()]), "J": _nanmean([r["J"] for r in rows.values()])}
        counts["mean"] = sum(counts.values())
        notes = ["per image, then mean per class, then mean over classes; empty ground truth counts in P, not J"]
        return ResultTable(title, convention, ["P", "J"], rows, counts, ["mean"], notes + list(extra_notes))


def _mask_probability(prediction, key, where):
    mask = prediction.get(key)
    if mask is None:
        return None
    mask = np.asarray(mask, np.float32)
    if mask.ndim == 3 and mask.shape[-1] == 1:
        mask = mask[..., 0]
    if mask.ndim != 2:
        raise ValueError(f"{where}: predicted '{key}' must be (S, S) probabilities; got {mask.shape}")
    return mask


def _score_mask(probability, gt, where, save_path=None):
    gt = as_binary_mask(gt, f"{where} ground-truth mask")
    pred = predicted_foreground(probability, *gt.shape)
    if save_path is not None:
        save_mask_png(save_path, pred)
    return precision_jaccard(pred, gt)


def evaluate_tss(examples: Iterable[Mapping], predictor: Predictor, *, alpha=0.05, mirror_input=True,
                 subset_names=None, flo_dir=None, mask_dir=None):
    """TSS: flow PCK (and co-segmentation P/J if the predictor gives masks), per subset and mean of subsets.

    examples: one per pair direction, with 'image_a' (source, the flow points into it), 'image_b' (target),
    'flow' ((H_B, W_B, 2) ground truth on B's grid), 'mask_a', 'mask_b', 'subset', 'flip', 'pair_id'.
    mirror_input: when 'flip' is set, mirror image A before predicting, as the released code does (set False if
    the examples already hold the mirrored image). Both flip treatments are scored on the same prediction:
    'flip_back' (default: the prediction is mirrored back into the ground truth's frame) and 'compat' (released
    behaviour, no flip back). flo_dir: writes `<pair_id>.flo` (flip_back version). mask_dir: writes 0/255 PNGs.
    P/J: one score per pair direction = the mean of A's and B's image scores; per subset, then over subsets.
    Returns {'flow_pck': ResultTable, 'coseg': ResultTable (only when masks are predicted)}.
    """
    pck_scores = {"flip_back": {}, "compat": {}}
    mask_scores = {"flip_back": _MaskScores(), "compat": _MaskScores()}
    any_mask = False
    for index, example in enumerate(examples):
        pair_id = _name(example.get("pair_id", index))
        where = f"TSS example {index} ({pair_id})"
        image_a, image_b = _image(example, "image_a", where), _image(example, "image_b", where)
        flip = bool(np.asarray(example.get("flip", False)))
        subset = _name(_field(example, "subset", where), subset_names)
        prediction = predictor(image_a[:, ::-1] if flip and mirror_input else image_a, image_b)
        theta_aff, theta_tps = _thetas(prediction, where)
        flow_gt = np.asarray(_field(example, "flow", where), np.float32)
        mask_b = _field(example, "mask_b", where)
        for mode in pck_scores:
            flip_back = flip and mode == "flip_back"
            flow = dense_flow(theta_aff, theta_tps, image_a.shape[:2], image_b.shape[:2], flip_a=flip_back)
            if flo_dir is not None and mode == "flip_back":
                os.makedirs(flo_dir, exist_ok=True)
                write_flo(os.path.join(flo_dir, f"{_file_stem(pair_id)}.flo"), flow)
            pck_scores[mode].setdefault(subset, []).append(flow_pck(flow, flow_gt, mask_b, image_a.shape[:2], alpha))
            prob_a = _mask_probability(prediction, "mask_a", where)
            prob_b = _mask_probability(prediction, "mask_b", where)
            if prob_a is None or prob_b is None:
                continue
            any_mask = True
            if flip_back:
                prob_a = prob_a[:, ::-1]  # mirroring at S x S commutes with the corner-aligned upsampling
            save = mask_dir is not None and mode == "flip_back"
            if save:
                os.makedirs(mask_dir, exist_ok=True)
            pa, ja = _score_mask(prob_a, _field(example, "mask_a", where), where,
                                 os.path.join(mask_dir, f"{_file_stem(pair_id)}_a.png") if save else None)
            pb, jb = _score_mask(prob_b, mask_b, where,
                                 os.path.join(mask_dir, f"{_file_stem(pair_id)}_b.png") if save else None)
            mask_scores[mode].add(subset, (pa + pb) / 2, _nanmean([ja, jb]))
    subsets = sorted(set(pck_scores["flip_back"]), key=lambda s: (TSS_SUBSETS + (s,)).index(s))
    rows, counts = {}, {}
    for subset in subsets:
        rows[subset] = {mode: _nanmean(pck_scores[mode][subset]) for mode in pck_scores}
        counts[subset] = len(pck_scores["flip_back"][subset])
    rows["mean"] = {mode: _nanmean([rows[s][mode] for s in subsets]) for mode in pck_scores}
    counts["mean"] = sum(counts.values())
    flow_table = ResultTable(
        f"TSS flow PCK@{alpha:g}", f"tss: correct iff EPE <= {alpha:g} * max(H_A, W_A), B's foreground, inclusive",
        ["flip_back", "compat"], rows, counts, ["mean"],
        ["flip_back: mirrored pairs scored in the ground truth's frame (default); compat: released code's "
         "behaviour (no flip back)", "mean = unweighted mean of the subsets' means over pair directions"])
    tables = {"flow_pck": flow_table}
    if any_mask:
        coseg = {mode: mask_scores[mode].table("", "") for mode in mask_scores}
        rows = {name: {f"{m} {k}": coseg[m].rows[name][k] for m in coseg for k in ("P", "J")}
                for name in coseg["flip_back"].rows}
        tables["coseg"] = ResultTable(
            "TSS co-segmentation", "coseg: sigma(M) upsampled to GT size, > 0.5; P, J per pair direction",
            [f"{m} {k}" for m in coseg for k in ("P", "J")], rows, coseg["flip_back"].counts, ["mean"],
            ["one score per pair direction = mean of A's and B's masks; mean per subset, then over subsets"])
    return tables


def collection_masks(images: Sequence[np.ndarray], predictor: Predictor, partners=5):
    """Co-segments a collection of one category: each image's mask averaged over its partner images.

    Aggregation (the paper does not pin one): with n images, every unordered pair {i, (i + k) mod n} for
    k = 1..partners is predicted once (deterministic, no RNG); the pair gives a mask for both of its images. Each
    image's mask is the mean of its sigma(M) over the pairs it appears in (2 * partners of them when
    n > 2 * partners; every other image when partners >= (n - 1) / 2). A single image is paired with itself.
    Returns a list of (S, S) float32 probabilities (None for all if the predictor gives no masks).
    """
    n = len(images)
    if n == 0:
        return []
    pairs = {(0, 0)} if n == 1 else set()
    for k in range(1, min(partners, n - 1) + 1):
        pairs.update(tuple(sorted((i, (i + k) % n))) for i in range(n))
    sums, counts = [None] * n, [0] * n
    for i, j in sorted(pairs):
        prediction = predictor(images[i], images[j])
        for index, key in ((i, "mask_a"), (j, "mask_b")):
            mask = _mask_probability(prediction, key, f"collection pair ({i}, {j})")
            if mask is None:
                return [None] * n
            sums[index] = mask if sums[index] is None else sums[index] + mask
            counts[index] += 1
    return [s / c for s, c in zip(sums, counts)]


def evaluate_cosegmentation(examples: Iterable[Mapping], predictor: Predictor, *, partners=5, subset=None,
                            category_names=None, mask_dir=None, dataset="Internet"):
    """Co-segmentation P/J on single-image examples grouped by class (Internet; any image+mask collection).

    examples: dicts with 'image' (uint8 (H, W, 3)), 'mask' (ground truth at the image's size), 'has_mask',
    'category', 'subset'. subset: keep only examples whose 'subset' equals it (e.g. the 100-image subsets).
    Each image's mask aggregates its partner images of the same class (see `collection_masks`); images without
    ground truth ('has_mask' false) serve as partners but are not scored. mask_dir: `<class>/<image_id>.png`
    (or `<index>.png` without 'image_id'), 0/255 at the ground truth's size.
    Returns {'coseg': ResultTable} with P, J per class and the mean over classes.
    """
    groups = {}
    for index, example in enumerate(examples):
        if subset is not None and _name(example.get("subset", "")) != str(subset):
            continue
        where = f"{dataset} example {index}"
        category = _name(_field(example, "category", where), category_names)
        groups.setdefault(category, []).append((where, example))
    scores = _MaskScores()
    for category, items in groups.items():
        images = [_image(ex, "image", where) for where, ex in items]
        probabilities = collection_masks(images, predictor, partners)
        for k, ((where, example), probability) in enumerate(zip(items, probabilities)):
            if probability is None:
                raise ValueError(f"{where}: the predictor returned no masks; co-segmentation needs a decoder")
            if not bool(np.asarray(example.get("has_mask", True))):
                continue
            save_path = None
            if mask_dir is not None:
                os.makedirs(os.path.join(mask_dir, _file_stem(category)), exist_ok=True)
                stem = _file_stem(_name(example["image_id"])) if "image_id" in example else f"{k:04d}"
                save_path = os.path.join(mask_dir, _file_stem(category), f"{stem}.png")
            scores.add(category, *_score_mask(probability, _field(example, "mask", where), where, save_path))
    return {"coseg": scores.table(f"{dataset} co-segmentation", "coseg: sigma(M) upsampled to GT size, > 0.5",
                                  [f"each image's mask = mean over the pairs {{i, i+k}}, k = 1..{partners} (cyclic), of its class"],
                                  category_names)}


def evaluate_synthetic(examples: Iterable[Mapping], predictor: Predictor, *, conventions=("kp_extent", "img224"),
                       alphas=(0.05, 0.1, 0.15), category_names=None):
    """Synthetic pairs with ground-truth keypoints and masks: keypoint PCK tables plus pair co-segmentation P/J.

    examples: pair dicts ('image_a', 'image_b', 'keypoints_a', 'keypoints_b', 'mask_a', 'mask_b', 'category').
    Every pair is predicted once; its PCK goes to the keypoint tables and each of its two masks (when predicted)
    is scored as one image in the co-segmentation table. Returns {convention: ResultTable, 'coseg': ResultTable}.
    """
    scores = _KeypointScores(_keypoint_tables_for(conventions, False), alphas)
    masks = _MaskScores()
    for index, example in enumerate(examples):
        where = f"synthetic example {index} ({_name(example.get('pair_id', index))})"
        prediction = predictor(_image(example, "image_a", where), _image(example, "image_b", where))
        _score_keypoint_example(scores, example, prediction, where, category_names)
        category = _name(example.get("category", "all"), category_names)
        for side in ("a", "b"):
            probability = _mask_probability(prediction, f"mask_{side}", where)
            if probability is not None and f"mask_{side}" in example:
                masks.add(category, *_score_mask(probability, example[f"mask_{side}"], where))
    tables = {name: scores.table(name, "synthetic keypoint transfer PCK", category_names) for name in scores.tables}
    if masks.items:
        tables["coseg"] = masks.table("synthetic co-segmentation", "coseg: sigma(M) upsampled to GT size, > 0.5",
                                      category_names=category_names)
    return tables


# --------------------------------------------------------------------------------------------------------------
# Whole datasets by name: the tfds builders of macosnet_datasets and the built-in synthetic pairs.

KEYPOINT_DATASETS = {"pf_pascal": "PF-PASCAL", "pf_willow": "PF-WILLOW", "spair71k": "SPair-71k"}
TFDS_DATASETS = tuple(KEYPOINT_DATASETS) + ("tss", "internet")
DATASETS = TFDS_DATASETS + ("synthetic_objects",)
DEFAULT_SPLITS = {"pf_pascal": "test", "pf_willow": "test", "spair71k": "test", "tss": "test",
                  "internet": "subset100", "synthetic_objects": "test"}
# The paper's figures (SPEC §8), attached as notes to the tables they belong to.
PAPER_FIGURES = {
    ("pf_pascal", "img224"): "paper (MaCoSNet): PCK@0.1 = 0.790 under img224 on the test split",
    ("pf_willow", "img224"): "paper (MaCoSNet): PCK@0.05/0.1/0.15 = 0.538/0.854/0.939 under img224",
    ("spair71k", "bbox"): "paper (MaCoSNet): PCK@0.1 = 0.266 under bbox (per-image mean) on the test split",
    ("tss", "flow_pck"): "paper (MaCoSNet): FG3DCar/JODS/PASCAL = 0.908/0.783/0.615, mean 0.769 (compat)",
    ("tss", "coseg"): "paper (MaCoSNet): mean P/J = 0.947/0.84",
    ("internet", "coseg"): "paper (MaCoSNet): mean P/J = 0.935/0.70 on the 100-image subsets",
}
PREPARE_HINT = ("prepare it from the manual download first (see docs/datasets.md)): "
                "`python -m macosnet_datasets.build {name} --manual_dir <folder with the extracted files> "
                "--data_dir {data_dir}`")


class DatasetNotPreparedError(errors.UserError, FileNotFoundError):
    """A tfds dataset that has not been built from its manual download (in the data dir that was searched)."""


def _base_name(name):
    """'pf_willow/macosnet' -> 'pf_willow' (builder name without its config)."""
    return str(name).split("/")[0].split(":")[0]


def _tfds_builder(name, data_dir):
    """The tfds builder `name` ('tss', 'pf_willow/macosnet', ...) after registering macosnet_datasets."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    import macosnet_datasets  # noqa: F401  (registers the builders)
    try:
        tf.config.set_visible_devices([], "GPU")  # reading examples never needs the accelerator
    except RuntimeError:
        pass  # TensorFlow already initialised its devices
    try:
        return tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # noqa: BLE001 - tfds raises several types for an unknown name or config
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise errors.UserError(f"dataset {name!r} is not a known tfds dataset ({type(e).__name__}: {first_line}); "
                         f"expected one of {DATASETS} (optionally with a builder config, e.g. pf_willow/macosnet)"
                         ) from e


def load_tfds_examples(name, split, data_dir=None):
    """(numpy example iterator, DatasetInfo) of a prepared tfds split, via `tfds.load(..., download=False)`.

    Raises DatasetNotPreparedError (saying how to prepare it) when the data dir holds no prepared version, and
    ValueError naming the available splits when `split` is not one of them.
    """
    import tensorflow_datasets as tfds
    builder = check_prepared(name, data_dir)
    available = sorted(builder.info.splits.keys())
    if split.split("[")[0] not in available:
        raise ValueError(f"dataset {name!r} has no split {split!r}; its splits are {available}")
    dataset = tfds.load(name, split=split, data_dir=data_dir, download=False)
    return tfds.as_numpy(dataset), builder.info


def check_prepared(name, data_dir=None):
    """The tfds builder of `name` when it is prepared in `data_dir`; DatasetNotPreparedError (naming the builder,
    the data dir and the build command) otherwise. Reads no example."""
    builder = _tfds_builder(name, data_dir)
    if not builder.is_prepared():
        where = data_dir or "the default tfds data dir (~/tensorflow_datasets or $TFDS_DATA_DIR)"
        raise DatasetNotPreparedError(
            f"dataset {name!r} is not prepared in {where} (looked for {builder.data_dir}; point data_dir / "
            f"config.evaluation.data_dir / $TFDS_DATA_DIR at the folder where it was built, or "
            + PREPARE_HINT.format(name=name, data_dir=data_dir or "<tfds data dir>"))
    return builder


def _class_names(info, key="category"):
    """Class names of a ClassLabel feature of the builder's info, or None."""
    try:
        feature = info.features[key]
    except (KeyError, TypeError):
        return None
    return list(feature.names) if hasattr(feature, "names") else None


def resolve_split(name, split):
    """The split to score: the dataset's default when None; Internet's generic 'test'/'validation' -> 'subset100'."""
    base = _base_name(name)
    if split is None:
        return DEFAULT_SPLITS.get(base, "test")
    if base == "internet" and split in ("test", "validation"):
        return "subset100"  # the evaluation protocol: the 100-image subsets (DATASETS.md)
    return split


def _unflip_pairs(examples):
    """Pairs with flip = 1 (PF-PASCAL's augmented training rows) mirrored, keypoints too: x -> W + 1 - x."""
    for example in examples:
        if not bool(np.asarray(example.get("flip", 0))):
            yield example
            continue
        example = dict(example)
        for side in ("a", "b"):
            image = np.asarray(example[f"image_{side}"])
            points = np.array(example[f"keypoints_{side}"], np.float32).reshape(-1, 2)
            points[:, 0] = image.shape[1] + 1 - points[:, 0]
            example[f"image_{side}"], example[f"keypoints_{side}"] = image[:, ::-1], points
        example["flip"] = 0
        yield example


def _add_notes(tables, base, extra=()):
    """Appends the paper's figure for each table (PAPER_FIGURES) and any extra notes, in place."""
    for key, table in tables.items():
        if (base, key) in PAPER_FIGURES:
            table.notes.append(PAPER_FIGURES[(base, key)])
        table.notes.extend(extra)
    return tables


def _evaluate_keypoint_dataset(base, examples, predictor, category_names, options):
    """PF-PASCAL / PF-WILLOW: img224 and kp_extent at α .05/.1/.15; SPair-71k: bbox at α 0.1 (per image, per kp)."""
    if base == "spair71k":
        conventions, alphas = ("bbox",), (0.1,)
    else:
        conventions, alphas = ("img224", "kp_extent"), (0.05, 0.1, 0.15)
    return evaluate_keypoints(_unflip_pairs(examples), predictor, dataset=KEYPOINT_DATASETS[base],
                              conventions=tuple(options.get("conventions", conventions)),
                              alphas=tuple(options.get("alphas", alphas)),
                              compat_kp_extent=bool(options.get("compat_kp_extent", False)),
                              category_names=category_names)


def _evaluate_tss_dataset(examples, predictor, out_dir, options):
    """TSS flow PCK (flip_back and compat) and, for joint models, co-segmentation; .flo (and masks) into out_dir."""
    flo_dir = mask_dir = None
    if out_dir is not None:
        flo_dir = os.path.join(out_dir, "tss_flo")
        if options.get("save_masks", True):
            mask_dir = os.path.join(out_dir, "tss_masks")
    return evaluate_tss(examples, predictor, alpha=float(options.get("alpha", 0.05)), flo_dir=flo_dir,
                        mask_dir=mask_dir)


def _evaluate_internet_dataset(examples, predictor, category_names, out_dir, options):
    """Internet co-segmentation P/J per class and mean (each image's mask aggregated over partner images)."""
    mask_dir = os.path.join(out_dir, "internet_masks") if out_dir is not None and options.get("save_masks", True) \
        else None
    return evaluate_cosegmentation(examples, predictor, partners=int(options.get("partners", 5)),
                                   category_names=category_names, mask_dir=mask_dir, dataset="Internet")


def _evaluate_synthetic_dataset(predictor, category_names, options):
    """Held-out synthetic_objects pairs (data.synthetic.make_synthetic_pairs): PCK (kp_extent, img224) and P/J."""
    from macosnet_jax.data import synthetic
    if "image_size" not in options:
        raise ValueError("synthetic_objects evaluation needs image_size= (the size the images are rendered at)")
    pairs = synthetic.make_synthetic_pairs(int(options.get("num_images", 48)), int(options["image_size"]),
                                           int(options.get("seed", 1000)), int(options.get("num_categories", 6)),
                                           int(options.get("num_pairs", 50)))
    conventions = tuple(options.get("conventions", ("kp_extent", "img224")))
    tables = evaluate_synthetic(pairs, predictor, conventions=conventions,
                                alphas=tuple(options.get("alphas", (0.05, 0.1, 0.15))), category_names=category_names)
    note = (f"held-out synthetic_objects: {len(pairs)} pairs of {options.get('num_images', 48)} images, "
            f"seed {options.get('seed', 1000)}, {options.get('num_categories', 6)} categories")
    return _add_notes(tables, "synthetic_objects", [note])


def evaluate_dataset(name, predictor: Predictor, *, split=None, data_dir=None, out_dir=None, category_names=None,
                     **options):
    """Scores `predictor` on a whole dataset by name, with that benchmark's protocol (SPEC §8). Returns
    {table name: ResultTable}.

    name: 'pf_pascal' | 'pf_willow[/pf|/macosnet]' | 'spair71k[/large|/small]' | 'tss' | 'internet' (prepared tfds
      datasets of macosnet_datasets in `data_dir`) | 'synthetic_objects' (generated held-out pairs).
    predictor: (image_a uint8 (H, W, 3), image_b) -> {'theta_aff' (6,), 'theta_tps' (18,), 'mask_a', 'mask_b'},
      e.g. `predict.Matcher(...).match`.
    split: the tfds split (default: DEFAULT_SPLITS; Internet always scores 'subset100' for 'test'/'validation').
    out_dir: where TSS .flo files (`tss_flo/`) and predicted masks (`tss_masks/`, `internet_masks/`) go; the
      tables themselves are written by the caller (`write_tables`).
    category_names: overrides the class names of the builder's info.
    options: alphas, conventions, compat_kp_extent (keypoints); alpha, save_masks (TSS); partners (Internet);
      image_size (required), num_images, seed, num_categories, num_pairs (synthetic_objects).
    Tables: pf_pascal / pf_willow {'img224', 'kp_extent'}; spair71k {'bbox'}; tss {'flow_pck'[, 'coseg']};
      internet {'coseg'}; synthetic_objects {'kp_extent', 'img224'[, 'coseg']}.
    """
    base = _base_name(name)
    if base not in DATASETS:
        raise ValueError(f"evaluate_dataset: unknown dataset {name!r}; expected one of {DATASETS}")
    split = resolve_split(name, split)
    if base == "synthetic_objects":
        return _evaluate_synthetic_dataset(predictor, category_names, options)
    examples, info = load_tfds_examples(name, split, data_dir)
    names = category_names or _class_names(info)
    if base in KEYPOINT_DATASETS:
        tables = _evaluate_keypoint_dataset(base, examples, predictor, names, options)
    elif base == "tss":
        tables = _evaluate_tss_dataset(examples, predictor, out_dir, options)
    else:
        tables = _evaluate_internet_dataset(examples, predictor, names, out_dir, options)
    return _add_notes(tables, base, [f"dataset {name}, split {split}"])
