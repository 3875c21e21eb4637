"""Co-segmentation P/J over image collections (Internet; any image+mask collection), grouped by class.

A collection is co-segmented pair by pair: each image's mask is the mean of its sigma(M) over the pairs with its
partner images of the same class (`collection_masks`), then scored per image (see `masks`), averaged per class and
over classes (`MaskScores`, which the TSS and synthetic drivers share).
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from macosnet_jax.evaluation.inputs import Predictor, display_name, field, image_field, mask_probability
from macosnet_jax.evaluation.masks import as_binary_mask, precision_jaccard, predicted_foreground, save_mask_png
from macosnet_jax.evaluation.tables import ResultTable, file_stem, nanmean, ordered_classes


class MaskScores:
    """Per-class accumulator of per-image (P, J); `table` renders P, J per class and their mean over classes."""

    def __init__(self):
        self.items = {}

    def add(self, category, precision, jaccard):
        self.items.setdefault(category, []).append((precision, jaccard))

    def table(self, title, convention, extra_notes=(), category_names=None):
        rows, counts = {}, {}
        for category, items in ordered_classes(self.items, category_names).items():
            rows[category] = {"P": float(np.mean([p for p, _ in items])), "J": nanmean([j for _, j in items])}
            counts[category] = len(items)
        rows["mean"] = {"P": nanmean([r["P"] for r in rows.values()]), "J": nanmean([r["J"] for r in rows.values()])}
        counts["mean"] = sum(counts.values())
        notes = ["per image, then mean per class, then mean over classes; empty ground truth counts in P, not J"]
        return ResultTable(title, convention, ["P", "J"], rows, counts, ["mean"], notes + list(extra_notes))


def score_mask(probability, gt, where, save_path=None):
    """(P, J) of one predicted sigma(M) (S, S) against its ground truth; saves the 0/255 foreground to save_path."""
    gt = as_binary_mask(gt, f"{where} ground-truth mask")
    pred = predicted_foreground(probability, *gt.shape)
    if save_path is not None:
        save_mask_png(save_path, pred)
    return precision_jaccard(pred, gt)


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
            mask = mask_probability(prediction, key, f"collection pair ({i}, {j})")
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
        if subset is not None and display_name(example.get("subset", "")) != str(subset):
            continue
        where = f"{dataset} example {index}"
        category = display_name(field(example, "category", where), category_names)
        groups.setdefault(category, []).append((where, example))
    scores = MaskScores()
    for category, items in groups.items():
        images = [image_field(ex, "image", where) for where, ex in items]
        probabilities = collection_masks(images, predictor, partners)
        for k, ((where, example), probability) in enumerate(zip(items, probabilities)):
            if probability is None:
                raise ValueError(f"{where}: the predictor returned no masks; co-segmentation needs a decoder")
            if not bool(np.asarray(example.get("has_mask", True))):
                continue
            save_path = None
            if mask_dir is not None:
                os.makedirs(os.path.join(mask_dir, file_stem(category)), exist_ok=True)
                stem = file_stem(display_name(example["image_id"])) if "image_id" in example else f"{k:04d}"
                save_path = os.path.join(mask_dir, file_stem(category), f"{stem}.png")
            scores.add(category, *score_mask(probability, field(example, "mask", where), where, save_path))
    note = f"each image's mask = mean over the pairs {{i, i+k}}, k = 1..{partners} (cyclic), of its class"
    return {"coseg": scores.table(f"{dataset} co-segmentation", "coseg: sigma(M) upsampled to GT size, > 0.5",
                                  [note], category_names)}
