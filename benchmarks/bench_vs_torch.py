"""JAX (this package) against a plain PyTorch CPU implementation of the same work, side by side (not a test).

  python benchmarks/bench_vs_torch.py                            # paper scale: ResNet-101 to layer3, 240 px
  python benchmarks/bench_vs_torch.py --batches 1,4 --runs 5
  python benchmarks/bench_vs_torch.py --scale demo               # the demo's model (ResNet-18 w16 to layer2, 96 px)
  python benchmarks/bench_vs_torch.py --xla-cpu-conv off         # JAX with XLA CPU's default (YNNPACK) convolutions

Needs torch (`pip install .[bench]`); the PyTorch side is benchmarks/torch_reference.py.

Rows (each at every batch of --batches; b = pairs, or images for the encoder):
  encoder   encoder forward on b images (inference, BatchNorm on running statistics), features of the last layer
  cascade   the two-stage eval cascade on b pairs: 3 encoder passes (A, B, A warped by θ_aff), both heads
  weak      a weak-training step on b pairs: A and B in one encoder call, the cascades AB and BA (their warped
            images in a second call: 4 encoder passes of b images), L = −(mean over AB, BA of the affine and the
            composed inlier scores) + the affine cycle loss; gradients for every parameter, Adam, the update skipped
            when the loss or a gradient is not finite
  strong    (--scale demo) the demo's strong step: one encoder call on affine and TPS pairs, grid loss per head

Each row starts one fresh worker process per side (so each side's peak RSS, its resident-set high-water mark from
getrusage, belongs to that row alone); the parent then alternates them: one warm-up call each (JAX's compiles),
then rounds of `--block` calls of JAX and `--block` calls of torch, so both sides see the same machine load, until
each side has `--runs` timed calls. The first call of each block is not timed into the median: a side's first call
after the other side ran is slower than its next (on a 2-core Intel Xeon, paper weak step at batch 1: JAX's first
calls 1.4–2.1 s, the calls after them 1.35–1.81 s, median 1.48 s; torch less so), so one call of each side in turn measures mostly those
first calls. `--block 1` times every call (one call of each side in turn). The table shows the 1-minute load average
before each row, the medians, and the JAX / PyTorch ratio of the blocks' first calls alone. On a shared machine
compare only rows of one run.

Identical on both sides: the layers and their shapes (NHWC in JAX, NCHW in torch), the number of encoder passes and
how they are batched, which BatchNorms use batch statistics (the paper scale freezes the encoder's; the demo's model
trains them), the loss terms and their formulas, the optimizer (Adam, lr of the config), the input images (the same
random uint8 arrays, normalised inside the timed work). Not identical: the weights (each side's own random init,
so the loss values differ), the bilinear sampler (torch's native grid_sample vs the package's gather-based one), the
non-finite guard (torch skips the update; the JAX step runs the update inside a lax.cond), the threading
(XLA's thread pool vs torch's intra-op threads; both use every core by default).
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import pathlib
import statistics
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
ROWS = ("encoder", "cascade", "weak", "strong")
DEFAULT_ROWS = {"paper": "encoder,cascade,weak", "demo": "encoder,cascade,weak,strong"}
ROW_TITLES = {"encoder": "encoder forward", "cascade": "two-stage eval cascade",
              "weak": "weak-training step (pair, 4 enc. passes)", "strong": "strong step (affine + TPS pairs)"}


# ------------------------------------------------------------------------------------------------------------
# Shared setup: configs and inputs.


def scale_config(scale: str, row: str):
    """The trainer config whose model, image size and optimizer the row uses."""
    sys.path.insert(0, str(HERE))
    import bench_steps
    # The demo's strong config for every demo row: its model and image size are the demo's (the joint config's
    # optimizer groups name MaCoSNet's modules, which the matcher alone does not have).
    return bench_steps.stage_config(scale, "strong" if scale == "demo" else "weak", None)


def torch_spec(config) -> dict:
    """What the PyTorch side needs of a config, as plain values (the torch worker does not import JAX)."""
    m = config.model
    return dict(depth=m.depth, last_layer=m.last_layer, width=m.get("width", 64), image_size=config.image_size,
                channels=tuple(m.get("regression_channels", (128, 64))),
                kernels=tuple(m.get("regression_kernels", (7, 5))),
                encoder_bn_train=bool(m.get("update_encoder_batch_stats", False)),
                learning_rate=float(config.optimizer.learning_rate))


def inputs(row: str, batch: int, size: int) -> dict:
    """Random uint8 images (and θs for the strong row), the same on both sides."""
    import numpy as np
    sys.path.insert(0, str(HERE))
    import bench_steps
    if row == "strong":
        import ml_collections
        return bench_steps.random_batch(ml_collections.ConfigDict(dict(batch_size=batch, image_size=size)), "strong")
    rng = np.random.default_rng(0)
    return {k: rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8) for k in ("image_a", "image_b")}


# ------------------------------------------------------------------------------------------------------------
# JAX side.


def _jax_pair_loss(model, params, batch_stats, batch):
    """The weak pair loss of the module docstring, from the package's model methods and losses."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from macosnet_jax import correlation as corr_ops
    from macosnet_jax import geometry, losses
    from macosnet_jax.models.matching import normalized_correlation

    def forward(module, a, b):
        n, size = a.shape[0], module.image_size
        features = module.encode(jnp.concatenate([a, b]), True)["features"]
        f_a, f_b = features[:n], features[n:]
        raw_ab = jax.vmap(lambda x, y: corr_ops.correlation(corr_ops.l2_normalize(x), corr_ops.l2_normalize(y)))(
            f_a, f_b)
        corr_ab = jax.vmap(corr_ops.normalize_correlation)(raw_ab)
        corr_ba = jax.vmap(corr_ops.normalize_correlation)(jax.vmap(corr_ops.swap_correlation)(raw_ab))
        aff = module.regress_affine(jnp.concatenate([corr_ab, corr_ba]), True)
        warped = jax.vmap(lambda im, th: geometry.warp_affine(im, th, size, size))(jnp.concatenate([a, b]), aff)
        f_w = module.encode(warped, True)["features"]
        tps = module.regress_tps(normalized_correlation(f_w, jnp.concatenate([f_b, f_a])), True)
        return corr_ab, corr_ba, aff[:n], aff[n:], tps[:n], tps[n:]

    images = [geometry.normalize_image(batch[k]) for k in ("image_a", "image_b")]
    (corr_ab, corr_ba, aff_ab, aff_ba, tps_ab, tps_ba), mutated = nn.apply(forward, model, mutable=["batch_stats"])(
        {"params": params, "batch_stats": batch_stats}, *images)
    matching = jnp.mean(jax.vmap(lambda *a: losses.matching_loss(*a, kernel="bilinear"))(
        corr_ab, aff_ab, tps_ab, corr_ba, aff_ba, tps_ba))
    cycle = jnp.mean(jax.vmap(lambda x, y: losses.cycle_loss(x, None, y, None, grid_size=10))(aff_ab, aff_ba))
    return matching + cycle, (mutated["batch_stats"], {"matching": matching, "cycle": cycle})


def _jax_step_runner(stage, config, batch):
    """The package's jitted train step (train.make_train_step) on `batch`: () -> loss, the state carried along."""
    import jax

    from macosnet_jax import train
    mesh = train.make_mesh(jax.devices()[:1])
    tx = train.make_optimizer(config.optimizer)
    state = jax.jit(lambda r: train.create_train_state(stage, tx, r),
                    out_shardings=train.replicated(mesh))(jax.random.key(0))
    step_fn = train.make_train_step(stage, mesh, seed=0)
    arrays = train.global_batch(batch, mesh)
    holder = {"state": state}

    def run():
        holder["state"], metrics = step_fn(holder["state"], arrays)
        return float(metrics["loss"])
    return run


def jax_work(scale: str, row: str, batch: int, data: dict):
    """() -> a float (blocks until the work is done) for the row, with the package's code."""
    import jax
    import jax.numpy as jnp

    from macosnet_jax import geometry, stages, train
    from macosnet_jax.models import factory
    from macosnet_jax.models.matching import init_matching_model
    config = scale_config(scale, row)
    if row == "strong":
        config.batch_size = batch
        return _jax_step_runner(train.build_stage(config), config, data)
    model = factory.matching_model(config)
    if row == "weak":
        size = config.image_size

        def init_fn(rng):
            zeros = jnp.zeros((1, size, size, 3), jnp.float32)
            return model.init(stages.fast_init_key(rng), zeros, zeros, train=False)

        def loss_fn(params, batch_stats, frozen, batch_arrays, rng):
            del frozen, rng
            return _jax_pair_loss(model, params, batch_stats, batch_arrays)
        stage = train.Stage(init_fn=init_fn, loss_fn=loss_fn, make_iterator=None, model=model, name="weak_pair")
        return _jax_step_runner(stage, config, data)
    variables = init_matching_model(model, jax.random.key(0))
    a, b = (jnp.asarray(data[k]) for k in ("image_a", "image_b"))
    if row == "encoder":
        fn = jax.jit(lambda v, x: model.apply(v, geometry.normalize_image(x), method="encode")["features"])
        return lambda: float(jnp.sum(fn(variables, a)))
    fn = jax.jit(lambda v, x, y: model.apply(v, geometry.normalize_image(x), geometry.normalize_image(y))["theta_tps"])
    return lambda: float(jnp.sum(fn(variables, a, b)))


# ------------------------------------------------------------------------------------------------------------
# PyTorch side.


def torch_work(spec: dict, row: str, data: dict):
    """() -> a float for the row, with benchmarks/torch_reference.py (spec: `torch_spec`)."""
    import torch
    sys.path.insert(0, str(HERE))
    import torch_reference as ref
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    model = ref.Matcher(spec["depth"], spec["last_layer"], spec["width"], spec["image_size"], spec["channels"],
                        spec["kernels"], encoder_bn_train=spec["encoder_bn_train"])
    if row in ("weak", "strong"):
        model.train()
        optimizer = torch.optim.Adam(model.parameters(), lr=spec["learning_rate"])
        if row == "weak":
            return lambda: ref.train_step(model, optimizer, ref.weak_pair_loss, ref.normalize_images(data["image_a"]),
                                          ref.normalize_images(data["image_b"]))

        def strong():
            tensors = {k: ref.normalize_images(v) if "image" in k else torch.from_numpy(v) for k, v in data.items()}
            return ref.train_step(model, optimizer, ref.strong_loss, tensors)
        return strong
    model.eval()

    def inference():
        with torch.inference_mode():
            a = ref.normalize_images(data["image_a"])
            if row == "encoder":
                return float(model.encoder(a).sum())
            return float(model.cascade(a, ref.normalize_images(data["image_b"]))[1].sum())
    return inference


# ------------------------------------------------------------------------------------------------------------
# Workers and the table.


def _worker(conn, side: str, scale: str, row: str, batch: int, spec: dict, data: dict):
    """Builds the side's work, then answers 'run' with (seconds, value) and 'rss' with its peak RSS in MiB."""
    import resource
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if side == "jax" or spec["host_malloc_both"]:
        from macosnet_jax import host_memory
        host_memory.keep_freed_memory(spec["host_malloc"])  # before JAX's backend (or torch's threads) start
    if side == "jax":
        from macosnet_jax import xla_cpu_flags
        xla_cpu_flags.prefer_eigen_convolutions(spec["xla_cpu_conv"])  # before JAX's backend starts
    work = jax_work(scale, row, batch, data) if side == "jax" else torch_work(spec, row, data)
    conn.send("ready")
    while True:
        message = conn.recv()
        if message == "run":
            t0 = time.perf_counter()
            value = work()
            conn.send((time.perf_counter() - t0, value))
        else:
            conn.send(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0)
            return


def measure_row(scale: str, row: str, batch: int, runs: int, torch_threads: int = 0, host_malloc: str = "auto",
                host_malloc_both: bool = False, xla_cpu_conv: str = "auto", block: int = 3) -> dict:
    """Both sides of one row, in alternating blocks of `block` calls: their warm-up times, the medians of the timed
    calls (all but each block's first; every call when block is 1) and of the blocks' first calls, peak RSS and
    last values."""
    context = multiprocessing.get_context("spawn")
    config = scale_config(scale, row)
    spec = dict(torch_spec(config), threads=torch_threads, host_malloc=host_malloc, host_malloc_both=host_malloc_both,
                xla_cpu_conv=xla_cpu_conv)
    data = inputs(row, batch, config.image_size)
    sides, result = {}, {"load": os.getloadavg()[0]}
    for side in ("jax", "torch"):  # built one after the other: their setups do not overlap
        parent, child = context.Pipe()
        process = context.Process(target=_worker, args=(child, side, scale, row, batch, spec, data))
        process.start()
        if parent.recv() != "ready":
            raise RuntimeError(f"{side} worker failed")
        sides[side] = (parent, process)

    def call(conn):
        conn.send("run")
        return conn.recv()
    for side, (conn, _) in sides.items():  # warm-up (JAX compiles)
        result[f"{side}_first"], result[f"{side}_value"] = call(conn)
    times = {side: [] for side in sides}
    block_first = {side: [] for side in sides}
    while len(times["jax"]) < runs:
        for side, (conn, _) in sides.items():
            for i in range(block):
                seconds, result[f"{side}_value"] = call(conn)
                (block_first[side] if i == 0 and block > 1 else times[side]).append(seconds)
    for side, (conn, process) in sides.items():
        conn.send("rss")
        result[f"{side}_rss"] = conn.recv()
        process.join()
        result[f"{side}_s"] = statistics.median(times[side])
        result[f"{side}_block_first_s"] = statistics.median(block_first[side] or times[side])
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=("paper", "demo"), default="paper")
    parser.add_argument("--rows", default="", help=f"comma-separated of {ROWS} (default: per scale)")
    parser.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    parser.add_argument("--runs", type=int, default=3, help="timed calls per side after one warm-up call (at least)")
    parser.add_argument("--block", type=int, default=3,
                        help="calls of one side in a row before the other side's; the first of each is not timed "
                             "(1: one call of each side in turn, all timed)")
    parser.add_argument("--torch-threads", type=int, default=0,
                        help="torch.set_num_threads (0: torch's default, one per core). On a loaded machine torch's "
                             "OpenMP barriers wait for descheduled threads: small ops can be 10x slower with 2 "
                             "threads than with 1")
    parser.add_argument("--host-malloc", choices=("auto", "on", "off"), default="auto",
                        help="the JAX worker's macosnet_jax.host_memory.keep_freed_memory, as the `macosnet` command "
                             "sets it")
    parser.add_argument("--host-malloc-both", action="store_true",
                        help="the same malloc setting for the PyTorch worker too")
    parser.add_argument("--xla-cpu-conv", choices=("auto", "on", "off"), default="auto",
                        help="the JAX worker's macosnet_jax.xla_cpu_flags.prefer_eigen_convolutions, as the `macosnet` "
                             "command sets it")
    args = parser.parse_args()
    rows = (args.rows or DEFAULT_ROWS[args.scale]).split(",")
    for row in rows:
        if row not in ROWS or (row == "strong" and args.scale != "demo"):
            raise SystemExit(f"unknown row {row!r} for --scale {args.scale} (rows: {DEFAULT_ROWS[args.scale]})")
    batches = [int(b) for b in args.batches.split(",")]
    if args.block < 1 or args.runs < 1:
        raise SystemExit(f"--block and --runs must be >= 1; got {args.block}, {args.runs}")
    print(f"scale {args.scale}, {os.cpu_count()} CPUs, torch threads {args.torch_threads or 'default'}, medians of "
          f">= {args.runs} after one warm-up call, JAX and PyTorch in alternating blocks of {args.block} calls"
          f"{' (the first of each block not timed)' if args.block > 1 else ''}; load = 1-min load average before the row; host malloc {args.host_malloc} "
          f"({'both sides' if args.host_malloc_both else 'JAX side'}), XLA CPU convolutions {args.xla_cpu_conv}", flush=True)
    header = (f"| {'work':42s} | batch | load | JAX s | PyTorch s | JAX / PyTorch | JAX peak RSS MiB | "
              f"PyTorch peak RSS MiB | JAX first call s | JAX / PyTorch, blocks' first calls |")
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|", flush=True)
    for batch in batches:
        for row in rows:
            r = measure_row(args.scale, row, batch, args.runs, args.torch_threads, args.host_malloc,
                            args.host_malloc_both, args.xla_cpu_conv, args.block)
            print(f"| {ROW_TITLES[row]:42s} | {batch:5d} | {r['load']:4.2f} | {r['jax_s']:5.3f} | "
                  f"{r['torch_s']:9.3f} | {r['jax_s'] / r['torch_s']:13.2f} | {r['jax_rss']:16.0f} | "
                  f"{r['torch_rss']:20.0f} | {r['jax_first']:16.1f} | "
                  f"{r['jax_block_first_s'] / r['torch_block_first_s']:34.2f} |", flush=True)
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
