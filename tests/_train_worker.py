"""A tiny stand-in training stage and a subprocess entry point for the training-system tests.

The toy stage: a conv + BatchNorm (train mode: global-batch statistics) + dense regressor on 8x8x3 images, an
MSE loss, and a data iterator whose batches are a pure function of (seed, step, process): process p gets rows
[p*L, (p+1)*L) of the global batch of that step. So 1 process x 4 devices and 2 processes x 2 devices see the
same global batch, and a restarted run sees the same batches as an uninterrupted one.

Run as a script (one JAX process per call; the device count must be fixed before JAX starts):
  python tests/_train_worker.py --workdir W --devices 2 [--process_id i --num_processes n --port P]
      [--steps N --batch B --ckpt_every K --nan_at S --restore_only --step_delay SECONDS]
It trains (or only restores) and writes <workdir>/final_<process_id>.npz with the parameters and the step.
"""
import argparse
import os
import sys


def toy_config(steps=6, batch=8, ckpt_every=2, seed=0, nan_at=-1, step_delay=0.0, width=4, build_delay=0.0):
    """Config of the toy stage, in the shape main.py and train.py expect."""
    import ml_collections
    return ml_collections.ConfigDict(dict(
        stage="_train_worker:build_toy_stage", seed=seed, total_steps=steps, batch_size=batch,
        log_every_steps=1, checkpoint_every_steps=ckpt_every, keep_checkpoints=3, tensorboard=False,
        init_from="", init_torch=ml_collections.ConfigDict(dict(path="", layout="", prefix="")),
        toy=dict(nan_at=nan_at, step_delay=step_delay, width=width, build_delay=build_delay),
        optimizer=dict(name="adam", learning_rate=1e-2, lr_boundaries=[4], lr_multipliers=[0.5],
                       param_groups=[("^head/", "head")], group_lr={"head": 3e-2}, frozen_groups=[],
                       grad_clip_norm=0.0)))


def toy_batch(seed, step, process_index, process_count, batch):
    """Rows of the global batch of `step` that belong to `process_index` (numpy)."""
    import numpy as np
    rng = np.random.default_rng([seed, step])
    images = rng.normal(size=(batch, 8, 8, 3)).astype(np.float32)
    targets = np.stack([images.mean((1, 2, 3)), images.std((1, 2, 3))], -1).astype(np.float32)
    local = batch // process_count
    sl = slice(process_index * local, (process_index + 1) * local)
    return {"image": images[sl], "target": targets[sl]}


def build_toy_stage(config):
    import time

    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from macosnet_jax import train

    class Toy(nn.Module):
        width: int = 4

        @nn.compact
        def __call__(self, x, train_mode):
            x = nn.Conv(self.width, (3, 3), use_bias=False, name="conv")(x)  # BN follows
            x = nn.BatchNorm(use_running_average=not train_mode, momentum=0.9, name="bn")(x)
            x = nn.relu(x).mean((1, 2))
            return nn.Dense(2, name="head")(x)

    if config.toy.get("build_delay", 0.0):  # stands in for a slow model build (SIGTERM-at-startup test)
        print("toy: building the stage", file=sys.stderr, flush=True)
        time.sleep(config.toy.build_delay)
    model = Toy(width=config.toy.width)
    nan_at = config.toy.nan_at

    def init_fn(rng):
        v = model.init(rng, jnp.zeros((1, 8, 8, 3)), False)
        return {"params": v["params"], "batch_stats": v["batch_stats"], "frozen": {}}

    def loss_fn(params, batch_stats, frozen, batch, rng):
        del frozen, rng
        pred, upd = model.apply({"params": params, "batch_stats": batch_stats}, batch["image"], True,
                                mutable=["batch_stats"])
        loss = jnp.mean((pred - batch["target"]) ** 2)
        if nan_at >= 0:  # poison the loss on the batch marked by the iterator (NaN-guard test)
            loss = loss + jnp.where(batch["poison"][0] > 0, jnp.nan, 0.0)
        return loss, (upd["batch_stats"], {"mse": loss})

    def make_iterator(start_step, process_index, process_count):
        step = start_step
        while True:
            b = toy_batch(config.seed, step, process_index, process_count, config.batch_size)
            if nan_at >= 0:
                import numpy as np
                b["poison"] = np.full((b["image"].shape[0],), float(step == nan_at), np.float32)
            if config.toy.step_delay:
                time.sleep(config.toy.step_delay)
            yield b
            step += 1

    return train.Stage(init_fn=init_fn, loss_fn=loss_fn, make_iterator=make_iterator, model=model, name="toy")


def flat_params(state):
    """{'params/conv/kernel': array, ...} on host (numpy), plus the step."""
    import jax
    import numpy as np
    from flax import traverse_util
    out = {"params/" + "/".join(k): np.asarray(jax.device_get(v))
           for k, v in traverse_util.flatten_dict(state.params).items()}
    out.update({"batch_stats/" + "/".join(k): np.asarray(jax.device_get(v))
                for k, v in traverse_util.flatten_dict(state.batch_stats).items()})
    out["step"] = np.asarray(jax.device_get(state.step))
    return out


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--workdir", required=True)
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--process_id", type=int, default=0)
    p.add_argument("--num_processes", type=int, default=1)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--ckpt_every", type=int, default=2)
    p.add_argument("--nan_at", type=int, default=-1)
    p.add_argument("--step_delay", type=float, default=0.0)
    p.add_argument("--restore_only", action="store_true")
    args = p.parse_args(argv)

    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import jax
    import numpy as np
    from absl import logging
    logging.set_verbosity(logging.INFO)
    logging.use_absl_handler()

    if args.num_processes > 1:
        jax.distributed.initialize(f"127.0.0.1:{args.port}", args.num_processes, args.process_id,
                                   initialization_timeout=30, heartbeat_timeout_seconds=10)
    from macosnet_jax import checkpoint as ckpt_lib
    from macosnet_jax import train

    config = toy_config(steps=args.steps, batch=args.batch, ckpt_every=args.ckpt_every, nan_at=args.nan_at,
                        step_delay=args.step_delay)
    if args.restore_only:
        stage = build_toy_stage(config)
        mesh = train.make_mesh()
        tx = train.make_optimizer(config.optimizer)
        abstract = jax.eval_shape(lambda r: train.create_train_state(stage, tx, r), jax.random.key(0))
        abstract = ckpt_lib.with_sharding(abstract, train.replicated(mesh))
        ck = ckpt_lib.Checkpointer(ckpt_lib.checkpoint_dir(args.workdir))
        state, _, _ = ck.restore_latest(abstract)
        ck.close()
        assert len(state.params["conv"]["kernel"].sharding.device_set) == args.devices
    else:
        state = train.train_and_evaluate(config, args.workdir)
    np.savez(os.path.join(args.workdir, f"final_{args.process_id}_{args.devices}.npz"), **flat_params(state))
    print(f"WORKER_DONE devices={jax.device_count()} processes={jax.process_count()}", flush=True)


def get_config(arg=None):
    """Lets this file serve as a `--config` for macosnet_jax.main: `--config tests/_train_worker.py:steps=8`."""
    from macosnet_jax import train
    a = train.parse_config_arg(arg, steps=6, batch=8, ckpt_every=2, nan_at=-1, step_delay=0.0, width=4, seed=0,
                               build_delay=0.0)
    return toy_config(steps=a.steps, batch=a.batch, ckpt_every=a.ckpt_every, seed=a.seed, nan_at=a.nan_at,
                      step_delay=a.step_delay, width=a.width, build_delay=a.build_delay)


if __name__ == "__main__":
    main()
