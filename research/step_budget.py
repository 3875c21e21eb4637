"""How many joint steps should the demo spend? Validation PCK/J along one longer joint run, per seed (demo data).

    python research/step_budget.py --workdir runs/step_budget --strong_dir runs/demo/strong \
        --steps 800,1200,1600 --seeds 0,1,2 --variants full,matching_only

Why: the demo's budget is wall time (10 minutes with the install), so its step counts are a choice. The choice is
made on the validation pairs (evaluation seed 2000, `--eval_seed`), never on the demo's test pairs (seed 1000).
For each seed and variant the joint stage trains from the shared strong checkpoint to the first budget, is scored,
then resumes to the next budget (the demo's learning rates are constant, so a resumed run is the longer run), and
so on. Prints one row per (variant, seed, steps) and the mean over seeds, and writes <workdir>/step_budget.json.
"""
from __future__ import annotations

import argparse
import ast
import json
import os

import numpy as np

from macosnet_jax import demo


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--strong_dir", required=True, help="A finished strong stage (e.g. runs/demo/strong).")
    parser.add_argument("--steps", default="800,1200,1600")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--variants", default="full")
    parser.add_argument("--eval_seed", type=int, default=2000)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="Override of the demo config (repeatable), e.g. joint.losses.cycle=0.1.")
    parser.add_argument("--tag", default="", help="Suffix of the run folders (one per override set).")
    parser.add_argument("--config_arg", default=None, help="Argument of configs/demo.py ('quick' for a smoke run).")
    args = parser.parse_args(argv)

    config = demo.load_config(args.config_arg)
    for assignment in args.set:
        key, value = assignment.split("=", 1)
        *path, leaf = key.split(".")
        node = config
        for name in path:
            node = node[name]
        node[leaf] = ast.literal_eval(value)
    config.eval.seed = args.eval_seed
    pairs = demo.evaluation_pairs(config)
    rows = []
    for variant in args.variants.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            run_dir = os.path.abspath(os.path.join(args.workdir, f"{variant}_seed{seed}{args.tag}"))
            for steps in (int(s) for s in args.steps.split(",")):
                config.joint.total_steps = steps
                joint_cfg = demo.variant_config(config, variant, os.path.abspath(args.strong_dir), seed=seed)
                metrics = demo.train_and_score_joint(joint_cfg, run_dir, pairs, config.image_size)
                row = {"variant": variant + args.tag, "seed": seed, "steps": steps, **metrics}
                print(json.dumps(row), flush=True)
                rows.append(row)
                with open(os.path.join(args.workdir, f"step_budget{args.tag}.json"), "w") as f:
                    json.dump(rows, f, indent=1, default=float)
    print("\nmean over seeds (validation pairs, evaluation seed %d)" % args.eval_seed)
    metrics = [m for m in rows[0] if m not in ("variant", "seed", "steps")]
    for variant in args.variants.split(","):
        for steps in (int(s) for s in args.steps.split(",")):
            sel = [r for r in rows if r["variant"] == variant + args.tag and r["steps"] == steps]
            cells = "  ".join(f"{m} {np.mean([r[m] for r in sel if r[m] is not None] or [np.nan]):.4f}"
                              for m in metrics)
            print(f"{variant:14s} {steps:5d} steps  {cells}")


if __name__ == "__main__":
    main()
