"""Where a train step spends its time: a ranked table of XLA CPU thunk times by part of the model (not a test).

  python benchmarks/profile_step.py --scale demo --stage strong     # the demo's strong step (batch 8)
  python benchmarks/profile_step.py --scale demo --stage joint      # the demo's joint step (batch 4 triplets)
  python benchmarks/profile_step.py --scale paper --stage weak --batch 1

How: the step of benchmarks/bench_steps.py (the stage's real jitted step, real shapes, random inputs) is compiled
and run once, then `--steps` steps run under jax.profiler. XLA's CPU runtime records one trace event per thunk
(a fusion, convolution, dot, gather, copy ...) named after its HLO instruction; each instruction's op_name (the JAX
name stack, from the compiled HLO text) says which part of the model it belongs to:
  - Flax module paths: encoder, affine/tps regression heads, decoder, the perceptual network (an apply of its own);
  - named scopes this script adds around the package's geometry, correlation and loss functions, the optimizer
    update, the non-finite guard (`train._all_finite`) and the gradient norm, by wrapping those functions in
    jax.named_scope for this process only (the package is not changed);
  - 'backward' where the name stack is inside transpose(...) (the VJP), 'forward' otherwise.
A thunk that belongs to several scopes is filed under the innermost wrapped function, with the outermost one in
brackets (e.g. 'grid_sample [inlier_score]'), else under its module. The table ranks the parts by summed thunk time
per step; % is of the summed thunk time (thunks may overlap on the thread pool, so the wall time per step, printed
above the table, can be less than the sum). Not covered: host<->device copies and recompiles (the batch is already
on the device and the step compiles once; `--steps` further steps reuse the executable, which the trace shows as
one execute per step).
"""
from __future__ import annotations

import argparse
import collections
import functools
import glob
import os
import pathlib
import re
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent

SCOPED = {
    "geometry": ("grid_sample", "affine_points", "tps_points", "composed_grid", "normalize_image"),
    "correlation": ("correlation", "l2_normalize", "normalize_correlation", "swap_correlation"),
    "losses": ("inlier_score", "cycle_loss", "transitivity_loss", "task_loss", "contrastive_loss", "grid_loss",
               "matching_pseudo_labels", "confident_pseudo_labels", "pseudo_label_loss", "masked_images",
               "warp_mask", "matching_mask_signal"),
    "train": ("_all_finite",),
}
SCOPE_PREFIX = "prof_"
MODULE_PARTS = (("perceptual", r"ResNet\b|jvp\(ResNet\)"), ("decoder", r"/decoder/"),
                ("affine regression head", r"affine_regression"), ("tps regression head", r"tps_regression"),
                ("encoder", r"/encoder/|MatchingModel\.encode"))


def add_scopes() -> None:
    """Wraps the package functions of SCOPED in jax.named_scope('prof_<name>') (module globals, this process)."""
    import importlib

    import jax
    import optax
    for module_name, names in SCOPED.items():
        module = importlib.import_module(f"macosnet_jax.{module_name}")
        for name in names:
            fn = getattr(module, name)
            setattr(module, name, _scoped(jax, SCOPE_PREFIX + name.strip("_"), fn))
    optax.tree.norm = _scoped(jax, SCOPE_PREFIX + "grad_norm", optax.tree.norm)


def _scoped(jax, scope, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with jax.named_scope(scope):
            return fn(*args, **kwargs)
    return wrapper


def scoped_optimizer(tx):
    """tx with its update under the named scope 'prof_optimizer'."""
    import jax
    import optax
    return optax.GradientTransformation(tx.init, _scoped(jax, SCOPE_PREFIX + "optimizer", tx.update))


def instruction_op_names(hlo_text: str) -> dict:
    """HLO instruction name -> op_name of its metadata.

    A fusion without one takes its fused computation's (the root's, else the first named instruction's). Entry
    instructions without any get a marker: 'copy of state' (a copy of a state buffer) or 'unnamed <opcode>'.
    """
    names, calls, members, opcodes = {}, {}, collections.defaultdict(list), {}
    current = None
    for line in hlo_text.splitlines():
        header = re.match(r"^(?:ENTRY )?%([\w.\-]+) ", line)
        if header and line.rstrip().endswith("{"):
            current = header.group(1)
            continue
        m = re.match(r"\s*(ROOT )?%([\w.\-]+) = \S+ ([\w\-]+)\((.*)", line)
        if not m:
            continue
        name = m.group(2)
        op = re.search(r'op_name="([^"]*)"', line)
        names[name] = op.group(1) if op else ""
        opcodes[name] = ("copy of state" if m.group(3) == "copy" and m.group(4).startswith("%state_")
                         else f"{m.group(3)} {re.sub(r'[.0-9]+$', '', name)}")
        call = re.search(r"calls=%([\w.\-]+)", line)
        if call:
            calls[name] = call.group(1)
        if current:
            members[current].insert(0, name) if m.group(1) else members[current].append(name)
    for name, computation in calls.items():
        if not names[name]:
            names[name] = next((names[n] for n in members[computation] if names.get(n)), "")
    for name, op in names.items():
        if not op:
            names[name] = "%" + (opcodes[name] if opcodes[name] == "copy of state" else "unnamed " + opcodes[name])
    return names


def part_of(op_name: str) -> str:
    """The table row of an instruction's op_name (see the module docstring)."""
    if op_name == "%copy of state":
        return "copies of state buffers (params / optimizer state)"
    if re.match(r"%unnamed fusion wrapped_(reduce-window|iota)", op_name):
        return "max-pool windows and indices (reduce-window, iota; no op_name)"
    if op_name.startswith("%"):
        return f"({op_name[1:]}, no op_name)"
    direction = "backward" if "transpose(" in op_name else "forward"
    scopes = re.findall(SCOPE_PREFIX + r"(\w+)", op_name)
    if scopes:
        inner, outer = scopes[-1], scopes[0]
        if inner in ("optimizer", "grad_norm", "all_finite"):
            return {"optimizer": "optimizer update (Adam)", "grad_norm": "gradient norm (metric)",
                    "all_finite": "non-finite guard: isfinite over the gradients"}[inner]
        label = inner if inner == outer else f"{inner} [{outer}]"
        return f"{label} {direction}"
    for part, pattern in MODULE_PARTS:
        if re.search(pattern, op_name):
            return f"{part} {direction}"
    if re.search(r"select_n$", op_name):
        return "non-finite guard: select old/new state"
    return f"other {direction}: {re.sub(r'^jit[(]step[)]/', '', op_name)[:60]}"


def thunk_times(trace_dir: str, op_names: dict) -> dict:
    """Summed duration (ns) per instruction name over the trace."""
    import jax
    path = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True))[-1]
    data = jax.profiler.ProfileData.from_file(path)
    totals = collections.Counter()
    for plane in data.planes:
        for line in plane.lines:
            for event in line.events:
                if event.name in op_names:
                    totals[event.name] += event.duration_ns
    return totals


def profile(scale: str, stage_name: str, batch: int | None, steps: int):
    import jax
    sys.path.insert(0, str(HERE))
    import bench_steps
    add_scopes()
    config, step_fn, state, arrays = bench_steps.prepared_step(scale, stage_name, batch, scoped_optimizer)
    t0 = time.perf_counter()
    step_fn = step_fn.lower(state, arrays).compile()  # compiled once; its HLO text names the thunks
    op_names = instruction_op_names(step_fn.as_text())
    state, metrics = step_fn(state, arrays)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - t0
    trace_dir = tempfile.mkdtemp(prefix="profile_step_")
    walls = []
    jax.profiler.start_trace(trace_dir)
    for _ in range(steps):
        t0 = time.perf_counter()
        state, metrics = step_fn(state, arrays)
        jax.block_until_ready(metrics)
        walls.append(time.perf_counter() - t0)
    jax.profiler.stop_trace()
    totals = thunk_times(trace_dir, op_names)
    parts, instructions = collections.Counter(), collections.defaultdict(collections.Counter)
    for name, ns in totals.items():
        part = part_of(op_names[name])
        parts[part] += ns
        instructions[part][name] += ns
    return dict(config=config, compile_s=compile_s, walls=walls, parts=parts, instructions=instructions,
                steps=steps)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=("paper", "demo"), default="demo")
    parser.add_argument("--stage", default="joint", help="strong, weak (paper) or joint")
    parser.add_argument("--batch", type=int, default=0, help="override the config's batch size (0: keep)")
    parser.add_argument("--steps", type=int, default=3, help="profiled steps (after one compile + warm-up step)")
    parser.add_argument("--top", type=int, default=30, help="rows shown (the rest are summed in one row)")
    parser.add_argument("--instructions", type=int, default=0, help="also list the N slowest instructions per row")
    args = parser.parse_args()
    import jax
    load = os.getloadavg()
    r = profile(args.scale, args.stage, args.batch or None, args.steps)
    walls = sorted(r["walls"])
    total = sum(r["parts"].values()) / r["steps"]
    print(f"{args.scale} {args.stage} step, batch {r['config'].batch_size}, jax {jax.__version__}, "
          f"load average before {load[0]:.2f}, after {os.getloadavg()[0]:.2f}")
    print(f"compile + first step {r['compile_s']:.1f} s; profiled steps: wall median {1e3 * walls[len(walls) // 2]:.0f}"
          f" ms; summed thunk time {total / 1e6:.0f} ms per step")
    print(f"| {'part':58s} | ms/step | % of thunk time |")
    print(f"|{'-' * 60}|---------|-----------------|")
    ranked = r["parts"].most_common()
    shown, rest = ranked[:args.top], ranked[args.top:]
    for part, ns in shown:
        print(f"| {part:58s} | {ns / r['steps'] / 1e6:7.1f} | {100 * ns / r['steps'] / total:15.1f} |")
        for name, ins_ns in r["instructions"][part].most_common(args.instructions):
            print(f"|   {name:56s} | {ins_ns / r['steps'] / 1e6:7.1f} | {'':15s} |")
    if rest:
        ns = sum(v for _, v in rest)
        print(f"| {'(' + str(len(rest)) + ' more parts)':58s} | {ns / r['steps'] / 1e6:7.1f} | "
              f"{100 * ns / r['steps'] / total:15.1f} |")


if __name__ == "__main__":
    main()
