"""Times the train steps with each convolution form, interleaved in one process, and prints the ratios.

  python benchmarks/bench_conv_forms.py --scale demo                       # demo strong (b8) and joint (b4)
  python benchmarks/bench_conv_forms.py --scale paper --stages weak --batch 1 --runs 2

The model writes two kinds of convolution as matrix products (same parameters as nn.Conv):
  head  the regression heads' VALID convs as patches x matrix (models.regression.ValidConv)
  1x1   the ResNet's 1x1 convs (bottleneck conv1/conv3, downsample) as einsum (models.resnet.Conv1x1)
This script builds the same step three times — 'conv' (both as nn.Conv, by substituting nn.Conv for those modules
while the step is traced), 'head' (only the heads as matrix products), 'head+1x1' (the model as it is) — and
times them in turns (run r of every variant, then run r + 1), so a machine whose load changes during the run
slows every variant alike. Per row: the median and min of `--runs` steps after one warm-up step, and the ratio
of each median to the 'conv' median. Loads average before and after are printed: on a shared machine the ratios
are the numbers to compare, not the milliseconds.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import sys
import time

import flax.linen as nn
import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import bench_steps  # noqa: E402  (the sibling script: configs and random batches)

VARIANTS = ("conv", "head", "head+1x1")


def _lax_valid_conv(features, kernel_size, precision=None, name=None):
    return nn.Conv(features, (kernel_size, kernel_size), padding="VALID", precision=precision, name=name)


def _lax_conv1x1(features, stride=1, precision=None, name=None):
    return nn.Conv(features, (1, 1), strides=(stride, stride), padding=((0, 0), (0, 0)), use_bias=False,
                   precision=precision, name=name)


@contextlib.contextmanager
def conv_forms(variant: str):
    """While active, the model traces with the convolution forms of `variant` (see the module docstring)."""
    from macosnet_jax.models import regression, resnet
    saved = regression.ValidConv, resnet.Conv1x1
    if variant == "conv":
        regression.ValidConv = _lax_valid_conv
    if variant in ("conv", "head"):
        resnet.Conv1x1 = _lax_conv1x1
    try:
        yield
    finally:
        regression.ValidConv, resnet.Conv1x1 = saved


def build(scale: str, stage_name: str, batch: int | None, variant: str):
    """(step function traced and compiled with `variant`, state, batch, compile seconds, first metrics)."""
    from macosnet_jax import train
    config = bench_steps.stage_config(scale, stage_name, batch)
    stage = train.build_stage(config)
    mesh = train.make_mesh(jax.devices()[:1])
    tx = train.make_optimizer(config.optimizer)
    state = jax.jit(lambda r: train.create_train_state(stage, tx, r),
                    out_shardings=train.replicated(mesh))(jax.random.key(0))
    if stage.load_frozen is not None:
        state = state.replace(frozen=jax.tree.map(jax.numpy.copy, stage.load_frozen(state.params, state.batch_stats)))
    step_fn = train.make_train_step(stage, mesh, seed=0)
    batch_arrays = train.global_batch(bench_steps.random_batch(config, stage_name), mesh)
    t0 = time.perf_counter()
    with conv_forms(variant):
        state, metrics = step_fn(state, batch_arrays)
        jax.block_until_ready(metrics)
    return step_fn, state, batch_arrays, time.perf_counter() - t0, metrics, config.batch_size


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=("paper", "demo"), default="demo")
    parser.add_argument("--stages", default="strong,joint", help="comma-separated: strong, weak (paper), joint")
    parser.add_argument("--batch", type=int, default=0, help="override the configs' batch size (0: keep)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {VARIANTS}")
    args = parser.parse_args()
    variants = args.variants.split(",")
    print(f"backend {jax.default_backend()}, jax {jax.__version__}, load average {os.getloadavg()}")
    print(f"{'scale':6s} {'stage':7s} {'batch':>5s} {'variant':>9s} {'compile s':>9s} {'median ms':>10s} "
          f"{'min ms':>9s} {'/ conv':>7s} {'loss':>9s}")
    for name in args.stages.split(","):
        built = {v: list(build(args.scale, name, args.batch or None, v)) for v in variants}
        times = {v: [] for v in variants}
        for _ in range(args.runs):
            for v in variants:
                step_fn, state, batch_arrays = built[v][:3]
                t0 = time.perf_counter()
                state, metrics = step_fn(state, batch_arrays)
                jax.block_until_ready(metrics)
                times[v].append(time.perf_counter() - t0)
                built[v][1], built[v][4] = state, metrics
        base = float(np.median(times[variants[0]]))
        for v in variants:
            median = float(np.median(times[v]))
            print(f"{args.scale:6s} {name:7s} {built[v][5]:5d} {v:>9s} {built[v][3]:9.1f} {1e3 * median:10.1f} "
                  f"{1e3 * min(times[v]):9.1f} {median / base:7.2f} {float(built[v][4]['loss']):9.4f}", flush=True)
    print(f"load average after {os.getloadavg()} (ratios are against the first variant, '{variants[0]}')")


if __name__ == "__main__":
    main()
