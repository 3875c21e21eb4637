"""CPU forward time of the two encoder choices of `config.model.backbone`, at the DINOv2 configs' input size.

    .venv/bin/python benchmarks/bench_encoders.py             # batch 8 at 224², median of 5 runs after 2 warm-ups
    .venv/bin/python benchmarks/bench_encoders.py --quick     # smoke check: batch 1, 1 warm-up, 3 runs

Encoders (random weights, jitted forward to the 'features' the correlation reads, timed with block_until_ready):
  dinov2_vits14    the backbone table's 'dinov2' entry at ViT-S/14 (384-d, 12 blocks, 6 heads, official 37x37
                   positional grid, interpolated to 16x16): (B, 224, 224, 3) -> (B, 16, 16, 384)
  resnet101_layer3 the 'resnet' entry of the paper (ResNet-101 cut after layer3): (B, 224, 224, 3) -> (B, 14, 14, 1024)
The ratio column is each encoder's median over the ResNet's. The foreign-load columns (bench_ops.LoadMeter: busy
cores of the machine minus this process's) and the 1-minute load average say how much other jobs took: numbers
measured under a foreign load near the core count are upper bounds. GFLOP: XLA's cost analysis of the compiled
forward (where the backend reports it).
"""
from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import bench_ops  # noqa: E402  (the sibling script: load meter, idle probe, timed calls)

from macosnet_jax.models import backbones  # noqa: E402

SIZE = 224
ENCODERS = {
    "dinov2_vits14": ("dinov2", {"vit_embed_dim": 384, "vit_depth": 12, "vit_heads": 6, "vit_registers": 0,
                                 "vit_pos_grid": 37}),
    "resnet101_layer3": ("resnet", {"depth": 101, "last_layer": "layer3", "width": 64}),
}


def make_encoder(name, batch, rng):
    """(jitted forward (variables, images) -> features, its arguments (variables, images))."""
    family, fields = ENCODERS[name]
    module = backbones.get(family).make(fields)
    images = jnp.asarray(rng.standard_normal((batch, SIZE, SIZE, 3)), jnp.float32)
    key = jax.random.key(0, impl="rbg")  # a fast init compile on CPU (see models.matching.init_matching_model)
    variables = jax.jit(module.init)(key, images[:1])
    forward = jax.jit(lambda v, x: module.apply(v, x, train=False)["features"])
    return forward, (variables, images)


def gflop(fn, args) -> float:
    try:
        cost = fn.lower(*args).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        return float(cost["flops"]) / 1e9
    except Exception:  # noqa: BLE001  (not every backend reports costs)
        return float("nan")


def time_encoder(name, batch, warmups, runs, rng) -> dict:
    fn, args = make_encoder(name, batch, rng)
    jax.block_until_ready(args)
    first = bench_ops._call(fn, args)  # compiles
    for _ in range(warmups - 1):
        bench_ops._call(fn, args)
    shape = tuple(jax.eval_shape(fn, *args).shape)
    before = bench_ops.idle_probe()
    with bench_ops.LoadMeter() as meter:
        times = [bench_ops._call(fn, args) for _ in range(runs)]
    return dict(name=name, shape=shape, median_ms=statistics.median(times) * 1e3, min_ms=min(times) * 1e3,
                first_s=first, before=before, during=meter.foreign, loadavg=os.getloadavg()[0],
                gflop=gflop(fn, args))


def print_table(results, cpus):
    base = next(r["median_ms"] for r in results if r["name"] == "resnet101_layer3")
    print(f"| encoder | (B,{SIZE},{SIZE},3) -> features | median ms | min ms | ratio to ResNet | GFLOP | "
          "foreign load (cores) before / during | load avg (1 min) | first call s (compile) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['name']} | {r['shape']} | {r['median_ms']:.1f} | {r['min_ms']:.1f} | "
              f"{r['median_ms'] / base:.2f} | {r['gflop']:.1f} | {r['before']:.2f} / {r['during']:.2f} (of {cpus}) | "
              f"{r['loadavg']:.2f} | {r['first_s']:.1f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke check: batch 1, 1 warm-up, 3 runs")
    parser.add_argument("--batch", type=int, default=None, help="default 8 (1 with --quick)")
    parser.add_argument("--runs", type=int, default=None, help="timed runs, default 5 (3 with --quick)")
    parser.add_argument("--warmups", type=int, default=None, help="untimed calls first, default 2 (1 with --quick)")
    args = parser.parse_args()
    batch = args.batch or (1 if args.quick else 8)
    runs = args.runs or (3 if args.quick else 5)
    warmups = max(1, args.warmups or (1 if args.quick else 2))

    ticks = bench_ops._cpu_ticks()
    cpus = ticks[2] if ticks else os.cpu_count()
    device = jax.devices()[0]
    print(f"jax {jax.__version__}, jaxlib {jaxlib.__version__} | device: {device.platform} ({device.device_kind}) | "
          f"CPUs: {cpus} | XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    print(f"batch {batch} at {SIZE}², {warmups} warm-up call(s) (the first compiles), median of {runs} timed runs"
          f"{' [--quick smoke check]' if args.quick else ''}")
    print(f"foreign load at start (1 s idle probe): {bench_ops.idle_probe():.2f} cores of {cpus}; "
          f"load average {os.getloadavg()[0]:.2f}\n")
    rng = np.random.default_rng(0)
    results = [time_encoder(name, batch, warmups, runs, rng) for name in ENCODERS]
    print_table(results, cpus)


if __name__ == "__main__":
    main()
