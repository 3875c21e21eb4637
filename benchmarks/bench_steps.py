"""Times the jitted train step of the demo's (or the paper's) stages on one device and prints a table.

  python benchmarks/bench_steps.py --scale demo                  # the demo's strong (batch 8) and joint (batch 4)
  python benchmarks/bench_steps.py --scale demo --stages joint --runs 9
  python benchmarks/bench_steps.py --scale paper --stages weak --batch 1 --runs 2

Not a test. Per row: compile time of the first step, then the median (and min) wall time of `--runs` further
steps on the same batch (the stage's own first batch; input generation excluded), and the loss. 'demo' is
configs/demo.py (ResNet-18 width 16 to layer2, 96 px); 'paper' is configs/strong_synthetic.py, weak_pfpascal.py and
macosnet_pfpascal.py (ResNet-101 to layer3, 240 px; the joint stage's perceptual network is a random ResNet-50:
the timing does not depend on its weights), with random uint8 images in place of the datasets. The load average
is printed first: on a shared machine compare only rows measured in the same run.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import time

import jax
import numpy as np

try:
    from macosnet_jax import host_memory, xla_cpu_flags
except ImportError:  # a checkout older than these modules (the baseline recipe of docs/measurements.md runs this file
    host_memory = xla_cpu_flags = None  # in one): glibc's malloc and XLA's convolutions as they are
MODES = ("auto", "on", "off")

DEMO_STAGES = {"strong": "strong", "joint": "joint"}
PAPER_CONFIGS = {"strong": "strong_synthetic.py", "weak": "weak_pfpascal.py", "joint": "macosnet_pfpascal.py"}


def stage_config(scale: str, stage: str, batch: int | None):
    """The trainer config of `stage` at `scale`, with its batch size overridden when `batch` is given."""
    if scale == "demo":
        from macosnet_jax import demo
        if stage not in DEMO_STAGES:
            raise SystemExit(f"--scale demo has the stages {sorted(DEMO_STAGES)}, not {stage!r}")
        config = demo.stage_config(demo.load_config(), DEMO_STAGES[stage])
    else:
        from macosnet_jax import config_files
        path = config_files.config_path(PAPER_CONFIGS[stage])
        spec = importlib.util.spec_from_file_location(f"bench_{stage}_config", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        config = module.get_config(None)
    if batch:
        config.batch_size = batch
    return config


def random_batch(config, stage: str) -> dict:
    """A batch of random uint8 images (and θs) with the stage's keys: no dataset needed."""
    rng = np.random.default_rng(0)
    n, size = config.batch_size, config.image_size

    def images():
        return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    if stage == "strong":
        from macosnet_jax import geometry
        aff = np.tile(np.asarray(geometry.IDENTITY_AFFINE, np.float32), (n, 1))
        tps = np.tile(np.asarray(geometry.IDENTITY_TPS, np.float32), (n, 1))
        aff += rng.normal(0, 0.1, aff.shape).astype(np.float32)
        tps += rng.normal(0, 0.05, tps.shape).astype(np.float32)
        return dict(affine_image_a=images(), affine_image_b=images(), affine_theta=aff, tps_image_a=images(),
                    tps_image_b=images(), tps_theta=tps)
    keys = "abc" if stage == "joint" and config.losses.get("transitivity", 0.0) else "ab"
    return {f"image_{k}": images() for k in keys}


def prepared_step(scale: str, stage_name: str, batch: int | None, wrap_optimizer=None):
    """(config, jitted step, initial state, device batch) of a stage at `scale`.

    wrap_optimizer: optional optax.GradientTransformation -> GradientTransformation (benchmarks/profile_step.py
    names the optimizer's ops with it)."""
    from macosnet_jax import train
    config = stage_config(scale, stage_name, batch)
    stage = train.build_stage(config)
    mesh = train.make_mesh(jax.devices()[:1])
    tx = train.make_optimizer(config.optimizer)
    if wrap_optimizer is not None:
        tx = wrap_optimizer(tx)
    state = jax.jit(lambda r: train.create_train_state(stage, tx, r),
                    out_shardings=train.replicated(mesh))(jax.random.key(0))
    if stage.load_frozen is not None:
        # A copy, as train.initial_state does: the step donates the state (params and frozen must not share).
        state = state.replace(frozen=jax.tree.map(jax.numpy.copy, stage.load_frozen(state.params, state.batch_stats)))
    step_fn = train.make_train_step(stage, mesh, seed=0)
    batch_arrays = train.global_batch(random_batch(config, stage_name), mesh)
    return config, step_fn, state, batch_arrays


def measure(scale: str, stage_name: str, batch: int | None, runs: int) -> dict:
    config, step_fn, state, batch_arrays = prepared_step(scale, stage_name, batch)
    t0 = time.perf_counter()
    state, metrics = step_fn(state, batch_arrays)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        state, metrics = step_fn(state, batch_arrays)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    if not bool(metrics["finite"]):
        raise RuntimeError(f"{stage_name} step at scale {scale}: the loss or gradients are not finite")
    return dict(batch=config.batch_size, compile_s=compile_s, median_ms=1e3 * float(np.median(times)),
                min_ms=1e3 * float(np.min(times)), loss=float(metrics["loss"]))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=("paper", "demo"), default="demo")
    parser.add_argument("--stages", default="strong,joint", help="comma-separated: strong, weak (paper), joint")
    parser.add_argument("--batch", type=int, default=0, help="override the configs' batch size (0: keep)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--host-malloc", choices=MODES, default="auto",
                        help="macosnet_jax.host_memory.keep_freed_memory, as the `macosnet` command sets it "
                             "(off: glibc's default, each step's large buffers are page-faulted in afresh)")
    parser.add_argument("--xla-cpu-conv", choices=MODES, default=None,
                        help="macosnet_jax.xla_cpu_flags.prefer_eigen_convolutions (default: off at --scale demo, as "
                             "macosnet-demo runs; auto at --scale paper, as the `macosnet` command sets it)")
    args = parser.parse_args()
    if host_memory is None:
        print("host malloc and XLA CPU convolutions: unchanged (this checkout has neither setting)")
    else:
        print(host_memory.keep_freed_memory(args.host_malloc))  # both before the backend starts
        print(xla_cpu_flags.prefer_eigen_convolutions(args.xla_cpu_conv or ("off" if args.scale == "demo" else "auto")))
    print(f"backend {jax.default_backend()}, jax {jax.__version__}, load average {os.getloadavg()}")
    print(f"{'scale':6s} {'stage':7s} {'batch':>5s} {'compile s':>9s} {'median ms':>10s} {'min ms':>9s} {'loss':>9s}")
    for name in args.stages.split(","):
        row = measure(args.scale, name, args.batch or None, args.runs)
        print(f"{args.scale:6s} {name:7s} {row['batch']:5d} {row['compile_s']:9.1f} {row['median_ms']:10.1f} "
              f"{row['min_ms']:9.1f} {row['loss']:9.4f}", flush=True)
    print(f"load average after {os.getloadavg()}")


if __name__ == "__main__":
    main()
