"""Times one jitted joint-stage train step (all five losses, forward + backward + Adam) and prints a table.

  python benchmarks/bench_joint_step.py                       # the paper's scale: ResNet-101 to layer3, 240 px
  python benchmarks/bench_joint_step.py --scale demo          # the CPU demo's model (ResNet-18/16 to layer2, 96 px)
  python benchmarks/bench_joint_step.py --batch 4,8 --precision default,highest

Not a test. Per row: compile time of the first step, then the median (and min) wall time of `--runs` further
steps on one device with the same random batch of triplets (input generation excluded), and triplets/s. The
perceptual network F is a randomly initialised ResNet-50 at paper scale (the timing does not depend on its
weights) and the strong-stage encoder copy at demo scale. `--precision` sets jax_default_matmul_precision for the
row: 'default' lets GPUs use TF32 for float32 convolutions and matmuls, 'highest' is true float32.
Before timing, the script prints the machine's load average so a busy machine is visible in the log.
"""
from __future__ import annotations

import argparse
import os
import time

import jax
import numpy as np



def joint_config(scale: str, batch: int):
    """The joint stage's config at `scale` ('paper' or 'demo') with batch size `batch`."""
    import importlib.util

    from macosnet_jax import config_files, demo
    if scale == "demo":
        config = demo.stage_config(demo.load_config(), "joint")
    else:
        path = config_files.config_path("macosnet_pfpascal")
        spec = importlib.util.spec_from_file_location("bench_joint_config", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        config = module.get_config(None)
    config.batch_size = batch
    return config


def measure(scale: str, batch: int, runs: int) -> dict:
    from macosnet_jax import train
    config = joint_config(scale, batch)
    stage = train.build_stage(config)
    mesh = train.make_mesh(jax.devices()[:1])
    tx = train.make_optimizer(config.optimizer)
    state = jax.jit(lambda r: train.create_train_state(stage, tx, r),
                    out_shardings=train.replicated(mesh))(jax.random.key(0))
    rng = np.random.default_rng(0)
    size = config.image_size
    local = {f"image_{k}": rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8) for k in "abc"}
    step_fn = train.make_train_step(stage, mesh, seed=0)
    batch_arrays = train.global_batch(local, mesh)
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
        raise RuntimeError(f"joint step at scale {scale}, batch {batch}: the loss or gradients are not finite")
    return dict(compile_s=compile_s, median_ms=1e3 * float(np.median(times)), min_ms=1e3 * float(np.min(times)),
                triplets_per_s=batch / float(np.median(times)), loss=float(metrics["loss"]))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=("paper", "demo"), default="paper")
    parser.add_argument("--batch", default="4", help="comma-separated batch sizes (triplets)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--precision", default="default", help="comma-separated: default, high, highest")
    args = parser.parse_args()
    print(f"backend {jax.default_backend()}, devices {jax.devices()[:1]}, jax {jax.__version__}, "
          f"load average {os.getloadavg()}")
    print(f"{'scale':6s} {'batch':>5s} {'precision':>9s} {'compile s':>9s} {'median ms':>10s} {'min ms':>9s} "
          f"{'triplets/s':>10s} {'loss':>9s}")
    for precision in args.precision.split(","):
        for batch in (int(b) for b in args.batch.split(",")):
            with jax.default_matmul_precision(None if precision == "default" else precision):
                row = measure(args.scale, batch, args.runs)
            print(f"{args.scale:6s} {batch:5d} {precision:>9s} {row['compile_s']:9.1f} {row['median_ms']:10.1f} "
                  f"{row['min_ms']:9.1f} {row['triplets_per_s']:10.2f} {row['loss']:9.4f}", flush=True)


if __name__ == "__main__":
    main()
