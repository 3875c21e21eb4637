"""Times the full two-stage matching forward (encoder x3, two correlations, two heads, the S×S warp).

    .venv/bin/python benchmarks/bench_matching.py                 # ResNet-101 to layer3, batch 8 at 240²
    .venv/bin/python benchmarks/bench_matching.py --depth 18 --batch 2 --runs 3

Random weights (timing does not depend on them). Reports the median of --runs timed calls after one warm-up
call (which also compiles), and the machine's idle share measured from /proc/stat while the timed calls ran:
on a shared machine a low idle share means foreign load, and the numbers are upper bounds.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import jax

from macosnet_jax.models.matching import MatchingModel, init_matching_model


def cpu_times():
    """(idle, total) jiffies summed over all CPUs, from the first line of /proc/stat (None off Linux)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return idle, sum(fields[:8])


def idle_share(before, after):
    if before is None or after is None or after[1] == before[1]:
        return float("nan")
    return (after[0] - before[0]) / (after[1] - before[1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, default=101)
    parser.add_argument("--last-layer", default="layer3")
    parser.add_argument("--image-size", type=int, default=240)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    probe = cpu_times()
    time.sleep(1.0)
    idle_before_start = idle_share(probe, cpu_times())

    model = MatchingModel(depth=args.depth, last_layer=args.last_layer, image_size=args.image_size)
    variables = init_matching_model(model, jax.random.PRNGKey(0))
    keys = jax.random.split(jax.random.PRNGKey(1))
    shape = (args.batch, args.image_size, args.image_size, 3)
    image_a, image_b = jax.random.normal(keys[0], shape), jax.random.normal(keys[1], shape)
    forward = jax.jit(lambda v, a, b: model.apply(v, a, b)["theta_tps"])

    start = time.perf_counter()
    jax.block_until_ready(forward(variables, image_a, image_b))
    warmup = time.perf_counter() - start

    times = []
    before = cpu_times()
    for _ in range(args.runs):
        start = time.perf_counter()
        jax.block_until_ready(forward(variables, image_a, image_b))
        times.append(time.perf_counter() - start)
    idle_during = idle_share(before, cpu_times())

    median = statistics.median(times)
    device = jax.devices()[0]
    print(f"device: {device.platform} {device.device_kind} | jax {jax.__version__} | os.cpu_count {os.cpu_count()}")
    print(f"machine idle share: {idle_before_start:.0%} before start (1 s probe), {idle_during:.0%} during the "
          "timed runs (this process included)")
    print()
    print("| model | input | batch | warm-up+compile s | median ms | min ms | max ms | ms / image pair |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| two-stage, ResNet-{args.depth} to {args.last_layer} | {args.image_size}² | {args.batch} | "
          f"{warmup:.1f} | {median * 1e3:.0f} | {min(times) * 1e3:.0f} | {max(times) * 1e3:.0f} | "
          f"{median * 1e3 / args.batch:.0f} |")
    print(f"({args.runs} timed runs)")


if __name__ == "__main__":
    main()
