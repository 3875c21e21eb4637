"""Evaluation on the five benchmarks of the paper (SPEC §8): the public names of `macosnet_jax.evaluation`.

The code lives in the package `macosnet_jax.evaluation`, one module per concern (see its docstring): keypoint PCK
and its conventions (`keypoints`), TSS flow PCK and .flo files (`flow`), co-segmentation P/J (`masks`), result
tables (`tables`), the benchmark drivers (`keypoint_driver`, `tss_driver`, `coseg_driver`, `dataset_driver`), the
tfds loading (`tfds_data`) and the benchmark table (`benchmarks`). This module keeps the names importable as
`macosnet_jax.evaluate.<name>` for users and scripts.
"""
from __future__ import annotations

from macosnet_jax.evaluation.benchmarks import (DATASETS, DEFAULT_SPLITS, KEYPOINT_DATASETS, PAPER_FIGURES,
                                                TFDS_DATASETS, TSS_SUBSETS, resolve_split)
from macosnet_jax.evaluation.coseg_driver import collection_masks, evaluate_cosegmentation
from macosnet_jax.evaluation.dataset_driver import evaluate_dataset, evaluate_synthetic
from macosnet_jax.evaluation.flow import FLO_MAGIC, FLOW_INVALID, dense_flow, flow_pck, read_flo, write_flo
from macosnet_jax.evaluation.inputs import Predictor
from macosnet_jax.evaluation.keypoint_driver import evaluate_keypoints
from macosnet_jax.evaluation.keypoints import (CONVENTION_DESCRIPTIONS, CONVENTIONS, IMG224_SIZE, PADDING_VALUE,
                                               bbox_length, img224_points, keypoint_pair_counts, kp_extent_length,
                                               pck, pck_counts, strip_padding, transfer_points)
from macosnet_jax.evaluation.masks import (as_binary_mask, precision_jaccard, predicted_foreground, save_mask_png,
                                           upsample_mask)
from macosnet_jax.evaluation.tables import ResultTable, write_tables
from macosnet_jax.evaluation.tfds_data import (PREPARE_HINT, DatasetNotPreparedError, check_prepared,
                                               load_tfds_examples)
from macosnet_jax.evaluation.tss_driver import evaluate_tss

__all__ = [
    "CONVENTIONS", "CONVENTION_DESCRIPTIONS", "DATASETS", "DEFAULT_SPLITS", "DatasetNotPreparedError", "FLOW_INVALID",
    "FLO_MAGIC", "IMG224_SIZE", "KEYPOINT_DATASETS", "PADDING_VALUE", "PAPER_FIGURES", "PREPARE_HINT", "Predictor",
    "ResultTable", "TFDS_DATASETS", "TSS_SUBSETS", "as_binary_mask", "bbox_length", "check_prepared",
    "collection_masks", "dense_flow", "evaluate_cosegmentation", "evaluate_dataset", "evaluate_keypoints",
    "evaluate_synthetic", "evaluate_tss", "flow_pck", "img224_points", "keypoint_pair_counts", "kp_extent_length",
    "load_tfds_examples", "pck", "pck_counts", "precision_jaccard", "predicted_foreground", "read_flo",
    "resolve_split", "save_mask_png", "strip_padding", "transfer_points", "upsample_mask", "write_flo",
    "write_tables",
]
