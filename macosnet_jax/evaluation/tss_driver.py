"""TSS (SPEC §8): flow PCK per subset and mean of subsets, and co-segmentation P/J when the model predicts masks.

Mirrored pairs: the ground truth is in the un-mirrored frame, so predictions are flipped back by default
('flip_back'); the released behaviour (no flip back) is 'compat' and is reported beside it, scored on the same
prediction.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

import numpy as np

from macosnet_jax.evaluation.benchmarks import TSS_SUBSETS
from macosnet_jax.evaluation.coseg_driver import MaskScores, score_mask
from macosnet_jax.evaluation.flow import dense_flow, flow_pck, write_flo
from macosnet_jax.evaluation.inputs import Predictor, display_name, field, image_field, mask_probability, thetas
from macosnet_jax.evaluation.tables import ResultTable, file_stem, nanmean


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
    mask_scores = {"flip_back": MaskScores(), "compat": MaskScores()}
    any_mask = False
    for index, example in enumerate(examples):
        pair_id = display_name(example.get("pair_id", index))
        where = f"TSS example {index} ({pair_id})"
        image_a, image_b = image_field(example, "image_a", where), image_field(example, "image_b", where)
        flip = bool(np.asarray(example.get("flip", False)))
        subset = display_name(field(example, "subset", where), subset_names)
        prediction = predictor(image_a[:, ::-1] if flip and mirror_input else image_a, image_b)
        theta_aff, theta_tps = thetas(prediction, where)
        flow_gt = np.asarray(field(example, "flow", where), np.float32)
        mask_b = field(example, "mask_b", where)
        for mode in pck_scores:
            flip_back = flip and mode == "flip_back"
            flow = dense_flow(theta_aff, theta_tps, image_a.shape[:2], image_b.shape[:2], flip_a=flip_back)
            if flo_dir is not None and mode == "flip_back":
                os.makedirs(flo_dir, exist_ok=True)
                write_flo(os.path.join(flo_dir, f"{file_stem(pair_id)}.flo"), flow)
            pck_scores[mode].setdefault(subset, []).append(flow_pck(flow, flow_gt, mask_b, image_a.shape[:2], alpha))
            prob_a = mask_probability(prediction, "mask_a", where)
            prob_b = mask_probability(prediction, "mask_b", where)
            if prob_a is None or prob_b is None:
                continue
            any_mask = True
            if flip_back:
                prob_a = prob_a[:, ::-1]  # mirroring at S x S commutes with the corner-aligned upsampling
            save = mask_dir is not None and mode == "flip_back"
            if save:
                os.makedirs(mask_dir, exist_ok=True)
            pa, ja = score_mask(prob_a, field(example, "mask_a", where), where,
                                 os.path.join(mask_dir, f"{file_stem(pair_id)}_a.png") if save else None)
            pb, jb = score_mask(prob_b, mask_b, where,
                                 os.path.join(mask_dir, f"{file_stem(pair_id)}_b.png") if save else None)
            mask_scores[mode].add(subset, (pa + pb) / 2, nanmean([ja, jb]))
    subsets = sorted(set(pck_scores["flip_back"]), key=lambda s: (TSS_SUBSETS + (s,)).index(s))
    rows, counts = {}, {}
    for subset in subsets:
        rows[subset] = {mode: nanmean(pck_scores[mode][subset]) for mode in pck_scores}
        counts[subset] = len(pck_scores["flip_back"][subset])
    rows["mean"] = {mode: nanmean([rows[s][mode] for s in subsets]) for mode in pck_scores}
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
