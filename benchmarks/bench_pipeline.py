"""Input-pipeline throughput on this machine: synthetic_objects generation, synthetic_warps batches, and the
tf.data pair/triplet pipeline (crop + flip augmentation), at the demo size (96) and the paper size (240).

Prints a table of medians over several timed runs after a warm-up, with the machine's idle state from /proc/stat
(the whole machine's busy cores during each measurement, minus this process's own CPU time = foreign load), because
other jobs on a small shared box can halve these numbers.

    .venv/bin/python benchmarks/bench_pipeline.py            # sizes 96 and 240, batch 16
    .venv/bin/python benchmarks/bench_pipeline.py --sizes 96 --runs 3 --batches 10
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from macosnet_jax.data import pipeline, synthetic, warps  # noqa: E402


def cpu_ticks():
    """(busy, total) jiffies of the whole machine from the first line of /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


class LoadMeter:
    """Busy cores of the machine and of this process over a measurement window."""

    def __enter__(self):
        self.ticks = cpu_ticks()
        self.own = time.process_time()
        self.wall = time.perf_counter()
        return self

    def __exit__(self, *exc):
        busy, total = cpu_ticks()
        wall = time.perf_counter() - self.wall
        ncpu = os.cpu_count() or 1
        frac = (busy - self.ticks[0]) / max(total - self.ticks[1], 1)
        self.machine_cores = frac * ncpu
        self.own_cpu_s = time.process_time() - self.own
        self.own_cores = self.own_cpu_s / max(wall, 1e-9)
        self.foreign_cores = max(self.machine_cores - self.own_cores, 0.0)
        self.wall_s = wall


def timed_runs(fn, runs):
    """Median wall seconds of fn() over runs, median foreign load (cores) and median own CPU seconds (all threads).

    Own CPU time per item is the figure that survives contention; the rate is what this machine gave right now.
    """
    times, foreign, cpu = [], [], []
    for _ in range(runs):
        with LoadMeter() as meter:
            fn()
        times.append(meter.wall_s)
        foreign.append(meter.foreign_cores)
        cpu.append(meter.own_cpu_s)
    return statistics.median(times), statistics.median(foreign), statistics.median(cpu)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[96, 240])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--batches", type=int, default=20, help="batches per timed run")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--images", type=int, default=128, help="synthetic images in the in-memory source")
    parser.add_argument("--threads", type=int, default=None, help="tf.data threads (default: half the cores)")
    args = parser.parse_args()

    with LoadMeter() as idle:
        time.sleep(2.0)
    print(f"machine: {os.cpu_count()} cores; before the runs, foreign load {idle.foreign_cores:.2f} cores "
          f"(idle {os.cpu_count() - idle.machine_cores:.2f} cores); jax {jax.__version__} on "
          f"{jax.devices()[0].platform}; tf.data threads {args.threads or pipeline.default_num_threads()}")
    rows = []
    for size in args.sizes:
        # synthetic_objects: first call compiles the renderer for this size.
        with LoadMeter() as first:
            synthetic.make_synthetic_objects(32, size, seed=0)
        t, f, c = timed_runs(lambda: synthetic.make_synthetic_objects(args.images, size, seed=1),
                             max(args.runs // 2, 1))
        rows.append((f"synthetic_objects {size}px", args.images / t, "images/s", f, 1e3 * c / args.images,
                     f"first 32 incl. compile {first.wall_s:.1f}s wall, {first.own_cpu_s:.1f}s cpu"))
        data = synthetic.make_synthetic_objects(args.images, size, seed=1)

        for kind in ("affine", "tps"):
            it = warps.make_warp_iterator(data, batch_size=args.batch, image_size=size, seed=0, kind=kind)
            next(it)  # compile
            t, f, c = timed_runs(lambda: [next(it) for _ in range(args.batches)], args.runs)
            rows.append((f"synthetic_warps {kind} {size}px", args.batch * args.batches / t, "pairs/s", f,
                         1e3 * c / (args.batch * args.batches), f"batch {args.batch}, numpy out"))

        for triplets in (False, True):
            it = pipeline.make_pair_iterator(data, batch_size=args.batch, image_size=size, seed=0,
                                             triplets=triplets, num_threads=args.threads)
            for _ in range(3):
                next(it)  # warm-up: graph tracing, thread pools, prefetch fill
            t, f, c = timed_runs(lambda: [next(it) for _ in range(args.batches)], args.runs)
            name = "triplets" if triplets else "pairs"
            rows.append((f"tf.data {name} {size}px", args.batch * args.batches / t, f"{name}/s", f,
                         1e3 * c / (args.batch * args.batches), f"batch {args.batch}, crop+flip, masks+keypoints"))

    print(f"\n{'what':34s} {'median rate':>12s} {'unit':10s} {'foreign load':>12s} {'own cpu/item':>13s}  notes")
    for name, rate, unit, foreign, cpu_ms, note in rows:
        print(f"{name:34s} {rate:12.1f} {unit:10s} {foreign:10.2f} c {cpu_ms:10.2f} ms  {note}")


if __name__ == "__main__":
    main()
