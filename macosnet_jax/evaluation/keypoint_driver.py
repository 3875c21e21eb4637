"""Keypoint-transfer PCK over a pair dataset (PF-PASCAL, PF-WILLOW, SPair-71k, synthetic pairs): per-class tables.

Each pair is predicted once and scored under every requested convention (see `keypoints`); a table row holds, for
each alpha, the mean over pairs of the per-pair PCK and the per-keypoint PCK (total correct / total keypoints).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np

from macosnet_jax.evaluation.inputs import Predictor, display_name, field, image_field, thetas
from macosnet_jax.evaluation.keypoints import (CONVENTION_DESCRIPTIONS, CONVENTIONS, as_points,
                                               keypoint_pair_counts)
from macosnet_jax.evaluation.tables import ResultTable, ordered_classes


class KeypointScores:
    """Per-class accumulator of (correct, total) per pair for each (table, alpha); `table` renders one table."""

    def __init__(self, tables, alphas):
        self.tables, self.alphas = list(tables), list(alphas)
        self.pairs = {t: {} for t in self.tables}  # table -> class -> list of (correct per alpha, total)

    def add(self, table, category, correct, total):
        self.pairs[table].setdefault(category, []).append((np.asarray(correct), total))

    def table(self, name, title, category_names=None):
        columns = [f"PCK@{a:g}" for a in self.alphas] + [f"PCK@{a:g} per-kp" for a in self.alphas]
        rows, counts = {}, {}
        groups = ordered_classes(self.pairs[name], category_names)
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


def keypoint_table_names(conventions, compat_kp_extent):
    """The tables to fill: one per convention (checked), plus 'kp_extent_compat' when asked for."""
    names = list(conventions)
    for c in names:
        if c not in CONVENTIONS:
            raise ValueError(f"unknown PCK convention {c!r}; expected one of {CONVENTIONS}")
    if compat_kp_extent:
        names.append("kp_extent_compat")
    return names


def score_keypoint_example(scores, example, prediction, where, category_names):
    """Adds one pair's counts to every table of `scores`; False (nothing added) when A has no valid keypoint."""
    points_a = as_points(field(example, "keypoints_a", where), f"{where} keypoints_a")
    points_b = as_points(field(example, "keypoints_b", where), f"{where} keypoints_b")
    if points_a.shape[0] == 0:
        return False  # nothing to score: dropped like the reference's NaN pairs
    size_a = np.asarray(field(example, "image_a", where)).shape[:2]
    size_b = np.asarray(field(example, "image_b", where)).shape[:2]
    point_transfer = prediction.get("point_transfer")
    theta_aff, theta_tps = (None, None) if point_transfer is not None else thetas(prediction, where)
    category = display_name(example.get("category", "all"), category_names)
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
    scores = KeypointScores(keypoint_table_names(conventions, compat_kp_extent), alphas)
    for index, example in enumerate(examples):
        where = f"{dataset} example {index} ({display_name(example.get('pair_id', index))})"
        prediction = predictor(image_field(example, "image_a", where), image_field(example, "image_b", where))
        score_keypoint_example(scores, example, prediction, where, category_names)
    return {name: scores.table(name, f"{dataset} keypoint transfer PCK", category_names) for name in scores.tables}
