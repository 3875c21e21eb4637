"""Times the train steps with the model's CPU-fast forms on and off, interleaved in one process; prints ratios.

  python benchmarks/bench_conv_forms.py --scale demo                       # demo strong (b8) and joint (b4)
  python benchmarks/bench_conv_forms.py --scale demo --variants all,all-pool
  python benchmarks/bench_conv_forms.py --scale paper --stages weak --batch 1 --runs 2

The package writes some operations in forms XLA CPU runs faster than the plain ones, with the same parameters and
the same numbers up to float round-off. The forms (FORMS), each with the plain form it replaces:
  head  the regression heads' VALID convs as patches x matrix (models.regression.ValidConv; plain: nn.Conv)
  1x1   the ResNet's 1x1 convs (bottleneck conv1/conv3, downsample) as einsum (models.resnet.Conv1x1; nn.Conv)
  pool  the stem's 3x3/2 max-pool on stride-2 phases with its own VJP (models.resnet.max_pool_3x3_s2;
        nn.max_pool)
  stem  the ResNet stem conv's input gradient on 2x2 pixel blocks (models.resnet.StemConv; plain: nn.Conv)
  deconv the decoder's stride-2 transposed convs one output phase at a time (models.decoder.conv_transpose_2x;
        plain: the lhs-dilated convolution, decoder.conv_transpose_2x_dilated)
  bn    a conv followed by a frozen BatchNorm as one op whose gradients keep the BatchNorm's scale off the
        activation-sized tensors (models.resnet.conv_bn with models.frozen_bn.conv_frozen_bn; plain: the conv,
        then nn.BatchNorm)
  once  each residual block's output computed once (models.resnet.materialized: divided by a runtime 1.0, which
        XLA does not duplicate into its consumers; plain: the output as it is, recomputed inside each consumer)
  smooth the smoothness term's window offsets as full-size views of the padded mask and image, summed before one
        reduction (losses.edges.edge_aware_smoothness; plain: a slice pair, weight and sum per offset)
  guard the train step's NaN guard as a cond around the update (train._apply_if_finite; plain: a where() between
        the old and the new state)
A variant names the forms it keeps: 'all' (the model as it is), 'conv' (none: every form plain), 'A+B' (only A
and B), 'all-A' (all but A). Each variant's step is traced with its forms (the plain ones substituted while it is
traced), and the variants are timed in turns (run r of every variant, then run r + 1; each turn starts one variant
later than the one before, so that no variant always runs first), so a machine whose load changes during the run
slows every variant alike. Per row: the median and min of `--runs` steps after one warm-up
step, and the ratio of each median to the first variant's; then the median process CPU time of a step (all
threads; other processes on a loaded machine inflate it less than the wall time) and its ratio. Load averages before and after are printed: on a shared
machine the ratios are the numbers to compare, not the milliseconds.
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

DEFAULT_VARIANTS = ("all", "all-pool", "conv")


def _lax_valid_conv(features, kernel_size, precision=None, name=None):
    return nn.Conv(features, (kernel_size, kernel_size), padding="VALID", precision=precision, name=name)


def _lax_conv1x1(features, stride=1, precision=None, name=None):
    return nn.Conv(features, (1, 1), strides=(stride, stride), padding=((0, 0), (0, 0)), use_bias=False,
                   precision=precision, name=name)


def _plain_stem_conv(features, kernel_size=7, precision=None, name=None):
    pad = kernel_size // 2
    return nn.Conv(features, (kernel_size, kernel_size), strides=(2, 2), padding=((pad, pad), (pad, pad)),
                   use_bias=False, precision=precision, name=name)


def _flax_max_pool(x):
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


def _plain_conv_bn(x, features, kernel, stride, use_running_average, precision, conv_name, bn_name):
    from macosnet_jax.models import resnet
    conv = resnet._conv(features, kernel, stride, conv_name, precision)
    return resnet._bn(use_running_average, bn_name)(conv(x))


def _plain_block_output(x, one):
    del one
    return x


def _where_apply_if_finite(finite, state, grads, batch_stats):
    new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    return jax.tree.map(lambda n, o: jax.numpy.where(finite, n, o), new_state, state)


def _sliced_smoothness(mask, image, *, sigma=0.1, radius=2, dilation=2):
    """The smoothness term as one slice pair, weight and sum per window offset (edges.edge_aware_smoothness's
    numbers up to round-off)."""
    from macosnet_jax.losses.edges import window_offsets
    image = jax.lax.stop_gradient(image)
    height, width = mask.shape
    total = 0.0
    for dy, dx in window_offsets(radius, dilation):
        def views(x):
            return (x[:height - dy, max(0, -dx):width - max(0, dx)], x[dy:, max(0, dx):width - max(0, -dx)])
        (p_i, p_j), (c_i, c_j) = views(mask), views(image)
        weight = jax.numpy.exp(-jax.numpy.sum((c_i - c_j) ** 2, axis=-1) / (2.0 * sigma ** 2))
        total = total + jax.numpy.sum(weight * (p_i * (1.0 - p_j) + p_j * (1.0 - p_i)))
    return total / (height * width)


def _forms():
    """form name -> (module, attribute, plain replacement)."""
    from macosnet_jax import train
    from macosnet_jax.losses import objective
    from macosnet_jax.models import decoder, regression, resnet
    return {"smooth": (objective, "edge_aware_smoothness", _sliced_smoothness),
            "head": (regression, "ValidConv", _lax_valid_conv),
            "1x1": (resnet, "Conv1x1", _lax_conv1x1),
            "pool": (resnet, "max_pool_3x3_s2", _flax_max_pool),
            "stem": (resnet, "StemConv", _plain_stem_conv),
            "deconv": (decoder, "conv_transpose_2x", decoder.conv_transpose_2x_dilated),
            "bn": (resnet, "conv_bn", _plain_conv_bn),
            "once": (resnet, "materialized", _plain_block_output),
            "guard": (train, "_apply_if_finite", _where_apply_if_finite)}


def kept_forms(variant: str, names) -> set:
    """The forms a variant keeps (see the module docstring)."""
    if variant == "all":
        return set(names)
    if variant == "conv":
        return set()
    if variant.startswith("all-"):
        dropped = set(variant[4:].split("-"))
        kept = set(names) - dropped
    else:
        dropped = set()
        kept = set(variant.split("+"))
    unknown = (kept | dropped) - set(names)
    if unknown:
        raise SystemExit(f"variant {variant!r}: unknown forms {sorted(unknown)} (forms: {sorted(names)})")
    return kept


@contextlib.contextmanager
def conv_forms(variant: str):
    """While active, the model traces with the forms of `variant` (see the module docstring)."""
    forms = _forms()
    kept = kept_forms(variant, forms)
    saved = {name: getattr(module, attr) for name, (module, attr, _) in forms.items()}
    for name, (module, attr, plain) in forms.items():
        if name not in kept:
            setattr(module, attr, plain)
    try:
        yield
    finally:
        for name, (module, attr, _) in forms.items():
            setattr(module, attr, saved[name])


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
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                        help="comma-separated variants: all, conv, A+B, all-A (forms: head, 1x1, pool, stem, deconv, bn, once, smooth, guard)")
    args = parser.parse_args()
    variants = args.variants.split(",")
    print(f"backend {jax.default_backend()}, jax {jax.__version__}, load average {os.getloadavg()}")
    print(f"{'scale':6s} {'stage':7s} {'batch':>5s} {'variant':>9s} {'compile s':>9s} {'median ms':>10s} "
          f"{'min ms':>9s} {'/ first':>7s} {'cpu ms':>8s} {'/ first':>7s} {'loss':>9s}")
    for name in args.stages.split(","):
        built = {v: list(build(args.scale, name, args.batch or None, v)) for v in variants}
        times = {v: [] for v in variants}
        cpu_times = {v: [] for v in variants}
        for run in range(args.runs):
            for v in variants[run % len(variants):] + variants[:run % len(variants)]:
                step_fn, state, batch_arrays = built[v][:3]
                t0, c0 = time.perf_counter(), time.process_time()
                state, metrics = step_fn(state, batch_arrays)
                jax.block_until_ready(metrics)
                times[v].append(time.perf_counter() - t0)
                cpu_times[v].append(time.process_time() - c0)
                built[v][1], built[v][4] = state, metrics
        base = float(np.median(times[variants[0]]))
        cpu_base = float(np.median(cpu_times[variants[0]]))
        for v in variants:
            median, cpu = float(np.median(times[v])), float(np.median(cpu_times[v]))
            print(f"{args.scale:6s} {name:7s} {built[v][5]:5d} {v:>9s} {built[v][3]:9.1f} {1e3 * median:10.1f} "
                  f"{1e3 * min(times[v]):9.1f} {median / base:7.2f} {1e3 * cpu:8.1f} {cpu / cpu_base:7.2f} "
                  f"{float(built[v][4]['loss']):9.4f}", flush=True)
    print(f"load average after {os.getloadavg()} (ratios are against the first variant, '{variants[0]}')")


if __name__ == "__main__":
    main()
