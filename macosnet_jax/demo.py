"""The CPU demo: the whole method, end to end, on built-in synthetic data, with no download.

    macosnet-demo --workdir runs/demo [--config configs/demo.py[:quick]]

The config defaults to the installed `demo.py` (macosnet_configs), so the command works from any directory after
`pip install`; `--config` takes a path or the name of an installed config (macosnet_jax.config_files).

1. Strong stage (CNNGeo): the matching network learns from synthetic warps with known θ (grid loss).
2. Joint stage (MaCoSNet): from those weights, matching and co-segmentation learn together from triplets of one
   category with the five losses and no ground truth at all.
3. When asked (`--config.variants=matching_only,coseg_only`, JOINT_VARIANTS): each stream alone, i.e. the joint
   stage again from the same strong weights with the same budget, with the matching losses only and with the
   co-segmentation loss only.
4. Evaluation on held-out instances: keypoint transfer PCK (landmarks of the synthetic categories) and
   co-segmentation P/J, beside trivial baselines (identity transform; all-foreground and centred-box masks), the
   strong-stage model and each stream alone, as tables (text + JSON) in the work dir.
5. Pictures of a few pairs (warped source, masks, keypoint transfer) and a contact sheet of masks.

Each stage checkpoints into its own folder under the work dir; running the command again resumes where it stopped
(a finished stage is not retrained).
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time

import ml_collections
import numpy as np
from absl import app, flags, logging

from macosnet_jax import config_files, demo_report, errors, geometry, predict, train, visualize
from macosnet_jax.evaluation.dataset_driver import evaluate_synthetic
from macosnet_jax.evaluation.keypoints import transfer_points
from macosnet_jax.models import factory

DEFAULT_CONFIG = config_files.config_path("demo")
STAGE_FIELDS = ("seed", "image_size", "model", "data")


def load_config(arg: str | None = None, path: str | os.PathLike = DEFAULT_CONFIG) -> ml_collections.ConfigDict:
    """`get_config(arg)` of a config file (default: the installed configs/demo.py)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("macosnet_demo_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def stage_config(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
    """A standalone trainer config for stage `name`: the stage's own fields plus the shared ones."""
    out = ml_collections.ConfigDict(config[name].to_dict())
    for field in STAGE_FIELDS:
        value = config[field]
        out[field] = value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value
    return out


# Variants of the joint stage (overrides of its loss weights), each trained from the strong stage's weights with
# the joint stage's data and budget: the demo's stream-alone rows and scripts/ablation.py.
JOINT_VARIANTS = {
    "full": {},
    # Matching, cycle and transitivity (unweighted inlier score): the decoder gets no gradient.
    "matching_only": dict(contrastive=0.0, task=0.0, smoothness=0.0, fg_weight="none"),
    # The oracle: matching_only with the ground-truth masks as foreground weights. Its gap over matching_only is
    # the most that masks can add to matching on this data.
    "matching_true_masks": dict(contrastive=0.0, task=0.0, smoothness=0.0, fg_weight="true_mask"),
    # The co-segmentation stream's own losses (the perceptual contrastive loss, and the masks' smoothness where the
    # joint stage has it): no matching losses, no task (cross-network) loss.
    "coseg_only": dict(matching=0.0, cycle=0.0, transitivity=0.0, task=0.0),
}
VARIANT_TITLES = {
    "full": "joint MaCoSNet again",
    "matching_only": "matching only (the joint stage's matching losses, no co-segmentation loss)",
    "matching_true_masks": "matching with ground-truth masks as foreground weights (the oracle)",
    "coseg_only": "co-segmentation only (the mask losses without matching: contrastive, smoothness)",
}


def variant_config(config: ml_collections.ConfigDict, variant: str, strong_dir: str,
                   seed: int | None = None) -> ml_collections.ConfigDict:
    """The joint stage's trainer config with JOINT_VARIANTS[variant]'s loss weights, starting from `strong_dir`."""
    if variant not in JOINT_VARIANTS:
        raise errors.UserError(f"config.variants: unknown joint-stage variant {variant!r}; expected one of "
                               f"{', '.join(JOINT_VARIANTS)}")
    out = stage_config(config, "joint")
    out.init_from = strong_dir
    out.losses.update(JOINT_VARIANTS[variant])
    if seed is not None:
        out.seed = seed
    return out


# ------------------------------------------------------------------------------------------------------------
# Held-out evaluation pairs.


def evaluation_pairs(config: ml_collections.ConfigDict) -> list[dict]:
    """Pairs (A, B) of one category from held-out synthetic images, keypoints visible in both (config.eval)."""
    from macosnet_jax.data import synthetic
    ev = config.eval
    return synthetic.make_synthetic_pairs(int(ev.num_images), config.image_size, int(ev.seed),
                                          int(config.data.num_categories), int(ev.num_pairs),
                                          str(config.data.get("background", "clutter")))


# ------------------------------------------------------------------------------------------------------------
# Predictors: callables (image_a uint8, image_b uint8) -> {'theta_aff', 'theta_tps', 'mask_a', 'mask_b'}.


def identity_predictor(image_a, image_b):
    return {"theta_aff": geometry.IDENTITY_AFFINE, "theta_tps": geometry.IDENTITY_TPS, "mask_a": None,
            "mask_b": None}


def mask_baseline_predictor(kind: str, size: int):
    """All-foreground masks, or a centred box covering the middle half of each side (25%..75%)."""
    mask = np.ones((size, size), np.float32)
    if kind == "centred_box":
        mask = np.zeros((size, size), np.float32)
        lo, hi = size // 4, size - size // 4
        mask[lo:hi, lo:hi] = 1.0
    elif kind != "all_foreground":
        raise ValueError(f"unknown mask baseline {kind!r}")

    def predict(image_a, image_b):
        return dict(identity_predictor(image_a, image_b), mask_a=mask, mask_b=mask)
    return predict


def trained_predictor(model, variables, size):
    """A trained MatchingModel (no masks) or joint model (θ_aff, θ_tps and both masks), through `predict.Matcher`."""
    return predict.Matcher(model, variables, size).match


def train_and_score_joint(joint_cfg: ml_collections.ConfigDict, run_dir: str, pairs: list[dict],
                          size: int) -> dict:
    """Trains (or resumes) one joint-stage run and scores it on `pairs`: {'PCK@0.1', 'P', 'J'} (PCK under
    kp_extent; P/J None for a model without masks). Used by the ablation and the step-budget probe.

    Raises errors.UserError when the run stopped before `joint_cfg.total_steps` (SIGTERM: it saved a checkpoint).
    """
    state = train.train_and_evaluate(joint_cfg, run_dir)
    if int(state.step) < joint_cfg.total_steps:
        raise errors.UserError(f"{run_dir}: stopped at step {int(state.step)} of {joint_cfg.total_steps} "
                               "(interrupted); rerun the same command to resume it")
    predictor = trained_predictor(factory.macosnet_model(joint_cfg),
                                  {"params": state.params, "batch_stats": state.batch_stats}, size)
    tables = evaluate_synthetic(pairs, predictor, conventions=("kp_extent",), alphas=(0.1,))
    summary = headline({"run": {k: t.to_json() for k, t in tables.items()}})
    return {k.split("/", 1)[1]: v for k, v in summary.items()}


# ------------------------------------------------------------------------------------------------------------
# Results.


def write_pictures(pairs, predictor, workdir, count):
    os.makedirs(workdir, exist_ok=True)
    for i, pair in enumerate(pairs[:count]):
        out = predictor(pair["image_a"], pair["image_b"])
        size_b = pair["image_b"].shape[:2]
        warped = visualize.warp_source(pair["image_a"], out["theta_aff"], out["theta_tps"], size_b)
        fig = visualize.match_figure(pair["image_a"], pair["image_b"], warped, out.get("mask_a"), out.get("mask_b"))
        visualize.save_figure(fig, os.path.join(workdir, f"pair{i}_match.png"))
        pred = transfer_points(pair["keypoints_b"], out["theta_aff"], out["theta_tps"],
                                        pair["image_a"].shape[:2], size_b)
        fig = visualize.keypoint_figure(pair["image_a"], pair["image_b"], pair["keypoints_b"], pred,
                                        pair["keypoints_a"])
        visualize.save_figure(fig, os.path.join(workdir, f"pair{i}_keypoints.png"))


def run_demo(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains both stages (resuming), evaluates, draws; returns the results dict (also written to the work dir)."""
    start = time.time()
    workdir = train.check_workdir(workdir)
    strong_dir, joint_dir = os.path.join(workdir, "strong"), os.path.join(workdir, "joint")

    variants = [v.strip() for v in str(config.get("variants", "")).split(",") if v.strip()]
    for variant in variants:
        variant_config(config, variant, strong_dir)  # an unknown name fails before any training
    stages = 2 + len(variants)
    logging.info("Stage 1/%d: strong (synthetic warps with known θ), %d steps", stages, config.strong.total_steps)
    strong_cfg = stage_config(config, "strong")
    strong_state = train.train_and_evaluate(strong_cfg, strong_dir)
    strong_time = time.time() - start

    logging.info("Stage 2/%d: joint MaCoSNet (weakly supervised, both streams), %d steps", stages,
                 config.joint.total_steps)
    joint_cfg = variant_config(config, "full", strong_dir)
    joint_state = train.train_and_evaluate(joint_cfg, joint_dir)
    joint_time = time.time() - start - strong_time

    variant_states = {}
    for number, variant in enumerate(variants, start=3):
        logging.info("Stage %d/%d: %s, %d steps", number, stages, VARIANT_TITLES[variant], config.joint.total_steps)
        variant_states[variant] = train.train_and_evaluate(variant_config(config, variant, strong_dir),
                                                           os.path.join(workdir, variant))
    train_time = time.time() - start

    logging.info("Evaluation on %d held-out pairs", config.eval.num_pairs)
    pairs = evaluation_pairs(config)
    size = config.image_size
    strong_model = factory.matching_model(strong_cfg)
    joint_model = factory.macosnet_model(joint_cfg)

    def trained(model, state):
        return trained_predictor(model, {"params": state.params, "batch_stats": state.batch_stats}, size)
    methods = {
        "identity": identity_predictor,
        "centred_box": mask_baseline_predictor("centred_box", size),
        "all_foreground": mask_baseline_predictor("all_foreground", size),
        "strong_only": trained(strong_model, strong_state),
        **{variant: trained(joint_model, state) for variant, state in variant_states.items()},
        "joint": trained(joint_model, joint_state),
    }
    alphas = tuple(config.eval.alphas)
    results, text = {}, []
    for name, predictor in methods.items():
        tables = evaluate_synthetic(pairs, predictor, conventions=("kp_extent", "img224"), alphas=alphas)
        results[name] = {key: table.to_json() for key, table in tables.items()}
        text.append(f"===== {name} =====\n" + "\n\n".join(t.to_text() for t in tables.values()))
    write_pictures(pairs, methods["joint"], os.path.join(workdir, "pictures"), int(config.eval.num_pictures))

    summary = demo_report.summarize(results)
    eval_time = time.time() - start - train_time
    summary.update(wall_time_s=round(time.time() - start, 1), strong_stage_s=round(strong_time, 1),
                   train_s=round(train_time, 1), num_pairs=len(pairs))
    results_path = os.path.join(workdir, "results.json")
    with open(results_path, "w") as f:
        json.dump({"summary": summary, "tables": results}, f, indent=1, default=float)
    with open(os.path.join(workdir, "results.txt"), "w") as f:
        f.write("\n\n".join(text) + "\n")
    print(demo_report.format_report(
        summary, list(methods),
        title=f"MaCoSNet CPU demo: {len(pairs)} held-out synthetic pairs (training seed {config.seed}, "
              f"evaluation seed {config.eval.seed})",
        notes=objective_notes(joint_cfg) + variant_notes(variants) + [
            "PCK: kp = keypoint-extent convention, img = image-size convention (docs/SPEC.md); P/J: "
            "co-segmentation precision and Jaccard. Blank: the method has no such output or does not train it."],
        timing={"strong stage": strong_time, "joint stage": joint_time,
                **({"stream-alone stages": train_time - strong_time - joint_time} if variants else {}),
                "evaluation": eval_time, "total": time.time() - start},
        files={"pictures": os.path.join(workdir, "pictures"), "results": results_path,
               "per-class tables": os.path.join(workdir, "results.txt")}))
    return summary


def objective_notes(joint_cfg: ml_collections.ConfigDict) -> list[str]:
    """One line saying which losses the joint stage used, and what it adds beyond the paper's objective."""
    losses = joint_cfg.losses
    used = [name for name in ("matching", "cycle", "transitivity", "contrastive", "task")
            if float(losses.get(name, 0.0)) > 0.0]
    line = f"joint objective: {', '.join(used)} (the paper's losses)"
    extra = []
    if losses.get("fg_weight_gradient") == "pseudo_label":
        extra.append("from matching pseudo-labels (losses.matching_pseudo_labels)")
    if float(losses.get("smoothness", 0.0)) > 0.0:
        extra.append("with a colour-edge smoothness (losses.edge_aware_smoothness)")
    if extra:
        line += "; beyond the paper, the masks also learn " + " and ".join(extra)
    return [line]


def variant_notes(variants: list[str]) -> list[str]:
    """One line saying how the stream-alone rows were trained, or how to ask for them."""
    if not variants:
        return ["each stream alone: --config.variants=matching_only,coseg_only (about 4 minutes more on 2 cores); "
                "over 3 seeds: scripts/ablation.py, docs/ablation.md"]
    return [f"{' / '.join(demo_report.ROW_NAMES.get(v, v) for v in variants)}: the joint stage's data, steps and "
            "start (the strong stage's weights) with one stream's losses; over 3 seeds: scripts/ablation.py, "
            "docs/ablation.md"]


def headline(results: dict) -> dict:
    """The `<method>/<metric>` summary of evaluation tables (see demo_report.summarize)."""
    return demo_report.summarize(results)


FLAGS = flags.FLAGS


PROG = "macosnet-demo"


def main(argv):
    """Runs the demo; an error a user can fix (see macosnet_jax.errors) is one line and exit status 2, and a work
    dir this command created is removed again."""
    del argv
    from macosnet_jax import checkpoint
    train.quiet_checkpoint_logging()
    if not FLAGS.verbose:
        demo_report.quiet_logging()
    existed = os.path.exists(FLAGS.workdir)
    try:
        run_demo(FLAGS.config, FLAGS.workdir)
    except (errors.UserError, checkpoint.CheckpointError, FileNotFoundError) as e:
        if not existed:
            shutil.rmtree(FLAGS.workdir, ignore_errors=True)
        if FLAGS.verbose or errors.verbose_requested([]):
            raise
        errors.report(PROG, errors.one_line(e))


def run():
    from ml_collections import config_flags

    sys.argv = config_files.resolve_argv(sys.argv)  # --config demo:quick, or configs/demo.py from any directory
    flags.DEFINE_string("workdir", "runs/demo", "Where checkpoints, metrics, tables and pictures go.")
    flags.DEFINE_bool("verbose", False, "Show every library log line (backend probes, checkpointing, TensorFlow) "
                      "and the traceback of errors a user can fix (also MACOSNET_VERBOSE=1).")
    try:  # the default config file is loaded here, and the --config.a.b=v overrides applied to it
        config_flags.DEFINE_config_file("config", str(DEFAULT_CONFIG), "The demo config file.", lock_config=False)
    except Exception as e:  # noqa: BLE001 - the config file's own exceptions, an unknown key
        if errors.verbose_requested():
            raise
        errors.report(PROG, errors.flag_error_message(e, sys.argv))
    app.run(main, flags_parser=errors.absl_flags_parser(PROG))


if __name__ == "__main__":
    run()
