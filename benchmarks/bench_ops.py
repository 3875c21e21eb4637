"""Per-op CPU timings of the matching pipeline's hot spots, with the machine's foreign load beside each number.

    .venv/bin/python benchmarks/bench_ops.py            # batch 8 at 240², median of 5 runs after 2 warm-ups
    .venv/bin/python benchmarks/bench_ops.py --quick    # smoke check: batch 1, 1 warm-up, 3 runs
    .venv/bin/python benchmarks/bench_ops.py --ops correlation,grid_sample --runs 9

Ops (all jitted, timed with block_until_ready):
  correlation  raw features (B, 15, 15, 1024) x2 -> normalised correlation (B, 15, 15, 225), vmapped
               (models.matching.normalized_correlation: L2 norm, dot products, ReLU + L2 over A positions)
  tps_grid     vmap of geometry.tps_grid over B thetas at 240x240
  grid_sample  vmap of geometry.grid_sample: a (240, 240, 3) image at a (240, 240, 2) grid, B of them
  matching     the full two-stage forward (MatchingModel, ResNet-101 cut at layer3, 240², random weights from
               models.matching.init_matching_model) -> theta_aff, theta_tps

Why the load column: on a small shared machine other jobs can halve these numbers. For each op the script
measures, from /proc/stat, how many cores the whole machine kept busy, and subtracts this process's own CPU time
(resource.getrusage, all threads) over the same interval: the rest is foreign load, in cores. It is measured in
a 1 s idle probe just before the op's timed runs ("before") and over the timed runs themselves ("during").
Numbers taken with a foreign load near the core count are upper bounds.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import statistics
import time

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

from macosnet_jax import geometry
from macosnet_jax.models.matching import MatchingModel, init_matching_model, normalized_correlation

OPS = ("correlation", "tps_grid", "grid_sample", "matching")
SIZE = 240  # image / grid size
FEATURE_GRID, FEATURE_CHANNELS = 15, 1024  # ResNet-101 layer3 at 240²


# ----------------------------------------------------------------------------------------------------------------
# Machine load.


def _cpu_ticks():
    """(busy jiffies, total jiffies, number of CPUs) of the whole machine from /proc/stat, or None off Linux."""
    try:
        with open("/proc/stat") as f:
            lines = f.readlines()
    except OSError:
        return None
    fields = [int(v) for v in lines[0].split()[1:9]]  # user nice system idle iowait irq softirq steal
    idle = fields[3] + fields[4]
    cpus = sum(1 for line in lines[1:] if line.startswith("cpu"))
    return sum(fields) - idle, sum(fields), cpus


def _own_cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)  # all threads of this process
    return usage.ru_utime + usage.ru_stime


class LoadMeter:
    """Context manager: foreign busy cores (machine busy cores minus this process's cores) over its interval."""

    foreign = float("nan")

    def __enter__(self):
        self._ticks, self._own, self._wall = _cpu_ticks(), _own_cpu_seconds(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        ticks, wall = _cpu_ticks(), time.perf_counter() - self._wall
        if ticks is None or self._ticks is None or ticks[1] == self._ticks[1]:
            return
        machine = (ticks[0] - self._ticks[0]) / (ticks[1] - self._ticks[1]) * ticks[2]
        own = (_own_cpu_seconds() - self._own) / max(wall, 1e-9)
        self.foreign = max(machine - own, 0.0)


def idle_probe(seconds=1.0) -> float:
    """Foreign load (cores) while this process sleeps."""
    with LoadMeter() as meter:
        time.sleep(seconds)
    return meter.foreign


# ----------------------------------------------------------------------------------------------------------------
# Ops: each returns (description of the shape, jitted function, its arguments).


def _rng_theta(rng, identity, batch, scale):
    return jnp.asarray(identity + rng.uniform(-scale, scale, (batch, identity.size)), jnp.float32)


def make_correlation(batch, rng):
    shape = (batch, FEATURE_GRID, FEATURE_GRID, FEATURE_CHANNELS)
    f_a, f_b = (jnp.asarray(rng.standard_normal(shape), jnp.float32) for _ in range(2))
    return f"({batch},15,15,1024)x2 -> ({batch},15,15,225)", jax.jit(normalized_correlation), (f_a, f_b)


def make_tps_grid(batch, rng):
    fn = jax.jit(jax.vmap(lambda t: geometry.tps_grid(t, SIZE, SIZE)))
    return f"({batch},18) -> ({batch},{SIZE},{SIZE},2)", fn, (_rng_theta(rng, geometry.IDENTITY_TPS, batch, 0.2),)


def make_grid_sample(batch, rng):
    images = jnp.asarray(rng.standard_normal((batch, SIZE, SIZE, 3)), jnp.float32)
    grids = jnp.asarray(rng.uniform(-1.1, 1.1, (batch, SIZE, SIZE, 2)), jnp.float32)
    fn = jax.jit(jax.vmap(geometry.grid_sample))
    return f"({batch},{SIZE},{SIZE},3) at ({batch},{SIZE},{SIZE},2)", fn, (images, grids)


def make_matching(batch, rng):
    model = MatchingModel(depth=101, last_layer="layer3", image_size=SIZE)
    variables = init_matching_model(model, jax.random.PRNGKey(0))
    images = [jnp.asarray(rng.standard_normal((batch, SIZE, SIZE, 3)), jnp.float32) for _ in range(2)]

    def forward(v, a, b):
        out = model.apply(v, a, b)
        return out["theta_aff"], out["theta_tps"]
    return f"R101-layer3, ({batch},{SIZE},{SIZE},3)x2 -> θ", jax.jit(forward), (variables, *images)


MAKERS = {"correlation": make_correlation, "tps_grid": make_tps_grid, "grid_sample": make_grid_sample,
          "matching": make_matching}


# ----------------------------------------------------------------------------------------------------------------
# Timing.


@dataclasses.dataclass
class Result:
    op: str
    shape: str
    median_ms: float
    min_ms: float
    first_call_s: float
    foreign_before: float
    foreign_during: float


def _call(fn, args):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start


def time_op(name, batch, warmups, runs, rng) -> Result:
    shape, fn, args = MAKERS[name](batch, rng)
    jax.block_until_ready(args)
    first = _call(fn, args)  # compiles
    for _ in range(warmups - 1):
        _call(fn, args)
    before = idle_probe()
    with LoadMeter() as meter:
        times = [_call(fn, args) for _ in range(runs)]
    return Result(name, shape, statistics.median(times) * 1e3, min(times) * 1e3, first, before, meter.foreign)


def print_table(results, cpus):
    print("| op | shape | median ms | min ms | foreign load (cores) before / during | first call s (compile) |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r.op} | {r.shape} | {r.median_ms:.2f} | {r.min_ms:.2f} | {r.foreign_before:.2f} / "
              f"{r.foreign_during:.2f} (of {cpus}) | {r.first_call_s:.1f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke check: batch 1, 1 warm-up, 3 runs")
    parser.add_argument("--batch", type=int, default=None, help="default 8 (1 with --quick)")
    parser.add_argument("--runs", type=int, default=None, help="timed runs, default 5 (3 with --quick)")
    parser.add_argument("--warmups", type=int, default=None, help="untimed calls first, default 2 (1 with --quick)")
    parser.add_argument("--ops", default=",".join(OPS), help=f"comma-separated subset of {OPS}")
    args = parser.parse_args()
    batch = args.batch or (1 if args.quick else 8)
    runs = args.runs or (3 if args.quick else 5)
    warmups = max(1, args.warmups or (1 if args.quick else 2))
    ops = [op for op in args.ops.split(",") if op]
    unknown = set(ops) - set(OPS)
    if unknown:
        parser.error(f"unknown op(s) {sorted(unknown)}; choose from {OPS}")

    ticks = _cpu_ticks()
    cpus = ticks[2] if ticks else os.cpu_count()
    device = jax.devices()[0]
    print(f"jax {jax.__version__}, jaxlib {jaxlib.__version__} | device: {device.platform} ({device.device_kind}) | "
          f"CPUs: {cpus} | XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    print(f"batch {batch}, {warmups} warm-up call(s) (the first compiles), median of {runs} timed runs"
          f"{' [--quick smoke check]' if args.quick else ''}")
    print(f"foreign load at start (1 s idle probe): {idle_probe():.2f} cores of {cpus}\n")
    rng = np.random.default_rng(0)
    results = [time_op(op, batch, warmups, runs, rng) for op in ops]
    print_table(results, cpus)


if __name__ == "__main__":
    main()
