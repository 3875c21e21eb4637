"""A whole dataset scored by name with its benchmark's protocol (SPEC §8): `evaluate_dataset`; the synthetic pairs.

The prepared tfds datasets of macosnet_datasets (PF-PASCAL, PF-WILLOW, SPair-71k, TSS, Internet) and the generated
held-out synthetic_objects pairs. Each benchmark's protocol (conventions, alphas, where files go) is one branch
here; the facts about the benchmarks (names, splits, the paper's figures) are in `benchmarks`.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

import numpy as np

from macosnet_jax.evaluation.benchmarks import DATASETS, KEYPOINT_DATASETS, add_notes, base_name, resolve_split
from macosnet_jax.evaluation.coseg_driver import MaskScores, evaluate_cosegmentation, score_mask
from macosnet_jax.evaluation.inputs import Predictor, display_name, image_field, mask_probability
from macosnet_jax.evaluation.keypoint_driver import (KeypointScores, evaluate_keypoints, keypoint_table_names,
                                                     score_keypoint_example)
from macosnet_jax.evaluation.tfds_data import class_names, load_tfds_examples
from macosnet_jax.evaluation.tss_driver import evaluate_tss


def evaluate_synthetic(examples: Iterable[Mapping], predictor: Predictor, *, conventions=("kp_extent", "img224"),
                       alphas=(0.05, 0.1, 0.15), category_names=None):
    """Synthetic pairs with ground-truth keypoints and masks: keypoint PCK tables plus pair co-segmentation P/J.

    examples: pair dicts ('image_a', 'image_b', 'keypoints_a', 'keypoints_b', 'mask_a', 'mask_b', 'category').
    Every pair is predicted once; its PCK goes to the keypoint tables and each of its two masks (when predicted)
    is scored as one image in the co-segmentation table. Returns {convention: ResultTable, 'coseg': ResultTable}.
    """
    scores = KeypointScores(keypoint_table_names(conventions, False), alphas)
    masks = MaskScores()
    for index, example in enumerate(examples):
        where = f"synthetic example {index} ({display_name(example.get('pair_id', index))})"
        prediction = predictor(image_field(example, "image_a", where), image_field(example, "image_b", where))
        score_keypoint_example(scores, example, prediction, where, category_names)
        category = display_name(example.get("category", "all"), category_names)
        for side in ("a", "b"):
            probability = mask_probability(prediction, f"mask_{side}", where)
            if probability is not None and f"mask_{side}" in example:
                masks.add(category, *score_mask(probability, example[f"mask_{side}"], where))
    tables = {name: scores.table(name, "synthetic keypoint transfer PCK", category_names) for name in scores.tables}
    if masks.items:
        tables["coseg"] = masks.table("synthetic co-segmentation", "coseg: sigma(M) upsampled to GT size, > 0.5",
                                      category_names=category_names)
    return tables


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
    return add_notes(tables, "synthetic_objects", [note])


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
    base = base_name(name)
    if base not in DATASETS:
        raise ValueError(f"evaluate_dataset: unknown dataset {name!r}; expected one of {DATASETS}")
    split = resolve_split(name, split)
    if base == "synthetic_objects":
        return _evaluate_synthetic_dataset(predictor, category_names, options)
    examples, info = load_tfds_examples(name, split, data_dir)
    names = category_names or class_names(info)
    if base in KEYPOINT_DATASETS:
        tables = _evaluate_keypoint_dataset(base, examples, predictor, names, options)
    elif base == "tss":
        tables = _evaluate_tss_dataset(examples, predictor, out_dir, options)
    else:
        tables = _evaluate_internet_dataset(examples, predictor, names, out_dir, options)
    return add_notes(tables, base, [f"dataset {name}, split {split}"])
