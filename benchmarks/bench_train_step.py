"""Times the data-parallel train step of a config's stage and prints a table (not a test).

  python benchmarks/bench_train_step.py --config configs/strong_synthetic.py:runlocal --devices 1,2,4 --steps 5

Each device count runs in its own subprocess (the CPU device count is fixed when JAX starts). Per row: compile
time of the first step, then the median wall time of `--steps` further steps (host->device batch transfer
included, input generation excluded: the same batch is reused), and images/s.
"""
import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_config(spec):
    import importlib.util

    from macosnet_jax import config_files
    path, _, arg = config_files.resolve(spec).partition(":")
    module_spec = importlib.util.spec_from_file_location("bench_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None)


def measure(config_spec, steps, batch_size):
    import jax
    import numpy as np

    from macosnet_jax import train
    config = _load_config(config_spec)
    if batch_size:
        config.batch_size = batch_size
    stage = train.build_stage(config)
    mesh = train.make_mesh()
    tx = train.make_optimizer(config.optimizer)
    state = jax.jit(lambda r: train.create_train_state(stage, tx, r),
                    out_shardings=train.replicated(mesh))(jax.random.key(0))
    local = next(stage.make_iterator(0, 0, 1))
    step_fn = train.make_train_step(stage, mesh, seed=0)
    t0 = time.perf_counter()
    state, metrics = step_fn(state, train.global_batch(local, mesh))
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        state, metrics = step_fn(state, train.global_batch(local, mesh))
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    step_s = float(np.median(times))
    return dict(devices=jax.device_count(), batch=config.batch_size, compile_s=compile_s, step_ms=1e3 * step_s,
                images_per_s=config.batch_size / step_s, backend=jax.default_backend())


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="configs/strong_synthetic.py:runlocal")
    p.add_argument("--devices", default="1,4", help="comma-separated CPU device counts (CPU only)")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--batch_size", type=int, default=0, help="override the config's global batch")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print("RESULT " + json.dumps(measure(args.config, args.steps, args.batch_size)), flush=True)
        return
    rows = []
    for n in [int(d) for d in args.devices.split(",")]:
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}", TF_CPP_MIN_LOG_LEVEL="2")
        out = subprocess.run([sys.executable, __file__, "--child", "--config", args.config, "--steps",
                              str(args.steps), "--batch_size", str(args.batch_size)], cwd=REPO, env=env,
                             capture_output=True, text=True)
        line = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
        if out.returncode or not line:
            sys.exit(f"device count {n} failed:\n{out.stderr[-3000:]}")
        rows.append(json.loads(line[0][7:]))
    print(f"config: {args.config}")
    print(f"{'backend':>8} {'devices':>7} {'batch':>5} {'compile s':>9} {'step ms':>9} {'images/s':>9}")
    for r in rows:
        print(f"{r['backend']:>8} {r['devices']:>7} {r['batch']:>5} {r['compile_s']:>9.2f} {r['step_ms']:>9.1f} "
              f"{r['images_per_s']:>9.1f}")


if __name__ == "__main__":
    main()
