"""Training machinery: TrainState, the data-parallel step, initial weights and the training loop (optimizer,
metric logging and work-dir handling in training/; the stage API in stage_api.py).

A training *stage* (strong / weak / joint, SPEC §7) plugs in as a `Stage`: an init function, a loss function
`loss_fn(params, batch_stats, frozen, batch, rng) -> (loss, (new_batch_stats, metrics))`, a batch iterator
factory `make_iterator(start_step, process_index, process_count)` yielding per-process numpy batches, and
(optionally) the Flax module (macosnet_jax/stage_api.py). Stages are built from the config by name (`build_stage`). The
optimizer comes from `config.optimizer`: one base optimizer, per-group learning rates (`optax.multi_transform`),
frozen groups (`optax.set_to_zero`), groups chosen by regular expressions on parameter paths.

Parallelism (DESIGN "Choices"): one `jax.jit` step over a 1-D `Mesh` with a 'data' axis spanning every device of
every process -- the supported successor of `pmap`. The batch is sharded `P('data')`, the state replicated `P()`.
Each process contributes its slice of the global batch (`jax.make_array_from_process_local_data`); the loss is a
mean over the global batch, so the gradient mean across devices (pmap's `pmean`) is implicit, and BatchNorm
statistics in train mode are global-batch statistics (sync BN) -- the result does not depend on the device count.

Resumption is exact: the data order is a pure function of (seed, step, process), the step rng is
`fold_in(key(seed), step)`, and the checkpoint holds the optimizer state and the data position.
"""
from __future__ import annotations

import json
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from etils import epath
from flax.training import train_state
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from macosnet_jax import checkpoint as ckpt_lib
from macosnet_jax.preemption import SigtermFlag
# The config helpers and the stage API live below the trainer; re-exported here as part of its public surface.
from macosnet_jax.experiment_config import base_config, epochs_to_steps, parse_config_arg  # noqa: F401
from macosnet_jax.stage_api import LossFn, Stage, build_stage, register_stage  # noqa: F401
# Optimizer, metric logging and work-dir handling live in training/; re-exported as the trainer's public surface.
from macosnet_jax.training.metric_log import (MetricLogger, format_eta, lines_up_to_step,  # noqa: F401
                                             quiet_checkpoint_logging)
from macosnet_jax.training.optimizer import learning_rate_schedule, make_optimizer, param_labels  # noqa: F401
from macosnet_jax.training.workdir import (ValidationRecord, best_checkpoint_dir, check_workdir,  # noqa: F401
                                          preemption_requested, restore_or_refuse)


# ------------------------------------------------------------------------------------------------------------
# State and optimizer
# ------------------------------------------------------------------------------------------------------------


class TrainState(train_state.TrainState):
    """TrainState with BatchNorm statistics and frozen (checkpointed, never optimized) variables."""
    batch_stats: Any = None
    frozen: Any = None


def create_train_state(stage: Stage, tx: optax.GradientTransformation, rng: jax.Array) -> TrainState:
    """A fresh TrainState (jittable; use under `jax.jit(..., out_shardings=...)` or `jax.eval_shape`)."""
    variables = stage.init_fn(rng)
    apply_fn = stage.model.apply if stage.model is not None else None
    return TrainState.create(apply_fn=apply_fn, params=variables["params"], tx=tx,
                             batch_stats=variables.get("batch_stats", {}), frozen=variables.get("frozen", {}))


# ------------------------------------------------------------------------------------------------------------
# Mesh, global batches, the step
# ------------------------------------------------------------------------------------------------------------


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """1-D mesh with axis 'data' over `devices` (default: every device of every process). Auto axes."""
    return Mesh(np.asarray(jax.devices() if devices is None else devices), ("data",))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Stitches each process's numpy batch (leading axis = its share) into global arrays sharded P('data')."""
    sharding = NamedSharding(mesh, P("data"))
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
                        dict(local_batch))


def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def _apply_if_finite(finite: jax.Array, state: TrainState, grads, batch_stats) -> TrainState:
    """The state after the update, or `state` itself when `finite` is false (the NaN guard).

    A cond with the update inside, not a where() over both states: XLA then updates the donated state buffers in
    place, whereas selecting between the old and the new state kept the old one alive next to its update and
    made XLA copy every optimizer-state buffer each step (and run the select over the whole state).
    """
    return jax.lax.cond(finite, lambda s: s.apply_gradients(grads=grads, batch_stats=batch_stats),
                        lambda s: s, state)


def make_train_step(stage: Stage, mesh: Mesh, seed: int) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """The jitted data-parallel step: (state, global batch) -> (state, metrics).

    A step whose loss or gradients are not finite leaves the state unchanged and reports `finite = 0`; the loop
    stops on it (NaN guard), so a poisoned state is never checkpointed.
    """
    rep = replicated(mesh)

    def step(state: TrainState, batch):
        rng = jax.random.fold_in(jax.random.key(seed), state.step)
        grad_fn = jax.value_and_grad(stage.loss_fn, has_aux=True)
        (loss, (new_batch_stats, metrics)), grads = grad_fn(state.params, state.batch_stats, state.frozen,
                                                            batch, rng)
        finite = jnp.isfinite(loss) & _all_finite(grads)
        new_state = _apply_if_finite(finite, state, grads, new_batch_stats)
        metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads),
                       finite=finite.astype(jnp.float32))
        return new_state, metrics

    return jax.jit(step, out_shardings=(rep, rep), donate_argnums=(0,))


# ------------------------------------------------------------------------------------------------------------
# Logging
# ------------------------------------------------------------------------------------------------------------


# ------------------------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------------------------


class NonFiniteLossError(RuntimeError):
    """The loss or the gradients became NaN/Inf; training stopped, the last good checkpoint is kept."""


def merge_initial_weights(state: TrainState, variables: Mapping, prefix: str, source: str,
                          sharding: NamedSharding) -> TrainState:
    """`state` with the matching arrays of variables {'params', 'batch_stats'} (a previous run or torch weights).

    prefix: where the tree goes ('' the root; e.g. 'matching': a MatchingModel inside MaCoSNet; 'a/b' nests
    deeper, e.g. 'matching/encoder': a bare encoder inside MaCoSNet). A tree that already has the prefix's first
    key at its top level (e.g. a joint run continued by SPair fine-tuning) is merged as is; a bare tree is nested
    under it. No parameter copied is an error naming `source`.
    """
    keys = [k for k in prefix.split("/") if k]
    for collection in ("params", "batch_stats"):
        tree = variables.get(collection, {})
        if keys and keys[0] not in tree:
            for key in reversed(keys):
                tree = {key: tree}
        merged, copied = ckpt_lib.merge_variables(getattr(state, collection), tree, f"{source} ({collection})")
        state = state.replace(**{collection: jax.device_put(merged, sharding)})
        logging.info("%s: %d %s arrays copied", source, copied, collection)
        if collection == "params" and copied == 0:
            raise ckpt_lib.IncompatibleCheckpointError(
                f"{source}: no parameter path matches the configured model (prefix '{prefix}')")
    return state


def initial_state(config: ml_collections.ConfigDict, stage: Stage, tx, mesh: Mesh) -> TrainState:
    """A fresh state, then weights from `config.init_from` (previous stage) or `config.init_torch` if set."""
    rep = replicated(mesh)
    create = jax.jit(lambda rng: create_train_state(stage, tx, rng), out_shardings=rep)
    state = create(jax.random.key(config.seed))
    init_from = config.get("init_from", "")
    if init_from:
        try:
            loaded = ckpt_lib.load_variables(init_from, rep)
        except ckpt_lib.CheckpointError as e:
            raise ckpt_lib.CheckpointError(f"config.init_from={init_from}: {e}") from e
        state = merge_initial_weights(state, loaded, config.get("init_prefix", ""), f"config.init_from={init_from}",
                                      rep)
    init_torch = config.get("init_torch", None)
    if init_torch and init_torch.get("path", ""):
        if stage.load_torch is not None:
            variables = stage.load_torch(init_torch.path, init_torch.layout)
        else:
            from macosnet_jax import weights  # only needed when torch weights are used
            variables = weights.load_torch_checkpoint(init_torch.path, init_torch.layout)
        # prefix, e.g. 'encoder': a bare ResNet goes inside the matching model.
        state = merge_initial_weights(state, variables, init_torch.get("prefix", ""),
                                      f"config.init_torch={init_torch.path} (layout '{init_torch.layout}')", rep)
    if stage.load_frozen is not None:
        # A copy: the step donates the state, and one buffer must not be donated twice (params and frozen).
        frozen = jax.tree.map(jnp.copy, stage.load_frozen(state.params, state.batch_stats))
        merged, copied = ckpt_lib.merge_variables(state.frozen, frozen, f"stage {stage.name}: frozen variables")
        expected = len(jax.tree.leaves(state.frozen))
        if copied != expected:
            raise ckpt_lib.IncompatibleCheckpointError(
                f"stage {stage.name}: load_frozen filled {copied} of the {expected} frozen arrays")
        state = state.replace(frozen=jax.device_put(merged, rep))
    return state


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *, stage: Stage | None = None,
                       mesh: Mesh | None = None,
                       validate: Callable[[TrainState], float] | None = None,
                       start_over: bool = False) -> TrainState:
    """Trains `config.total_steps` steps (resuming from `workdir` when it holds a checkpoint); returns the state.

    Config fields used: seed, total_steps, batch_size (global), optimizer (see make_optimizer), log_every_steps,
    checkpoint_every_steps, keep_checkpoints, init_from, init_torch, stage (when `stage` is not given), and with
    `validate`: evaluation.every_steps and evaluation.early_stop_drop.
    validate: (state) -> score, higher is better (e.g. validation PCK; every process calls it). When given and
      config.evaluation.every_steps > 0, it runs every that many steps and at the last step; scores are logged as
      'validation', the best state is kept in `best_checkpoint_dir(workdir)` and `validation.json`, and training
      stops early once a score is more than evaluation.early_stop_drop (> 0) below the best. The returned state
      is then the last one trained; the best is in best/.
    start_over: when every checkpoint of the work dir is unreadable (each is moved to checkpoints.corrupt/),
      train again from step 0 instead of raising UnreadableCheckpointsError.
    On resume, `metrics.jsonl` is cut back to the restored step, so every step appears in it once.
    Raises NonFiniteLossError on a NaN/Inf step (after making sure the last good checkpoint is written).
    """
    workdir = check_workdir(workdir)
    stage = stage or build_stage(config)
    mesh = mesh or make_mesh()
    n_dev, n_proc = mesh.devices.size, jax.process_count()
    if config.batch_size % n_dev:
        raise ValueError(f"config.batch_size={config.batch_size} must be divisible by the number of devices "
                         f"({n_dev})")
    is_main = jax.process_index() == 0
    tx = make_optimizer(config.optimizer)
    rep = replicated(mesh)

    abstract = jax.eval_shape(lambda rng: create_train_state(stage, tx, rng), jax.random.key(0))
    abstract = ckpt_lib.with_sharding(abstract, rep)
    checkpointer = ckpt_lib.Checkpointer(ckpt_lib.checkpoint_dir(workdir),
                                         max_to_keep=config.get("keep_checkpoints", 3))
    restored = restore_or_refuse(checkpointer, abstract, start_over)
    if restored is not None:
        state, _, meta = restored
        position = meta["data_position"]
        start_step = int(position["step"])
        if position.get("seed") != config.seed or position.get("batch_size") != config.batch_size:
            logging.warning("Resuming with seed/batch %s/%s but the checkpoint was written with %s/%s: the data "
                            "order will differ from the original run.", config.seed, config.batch_size,
                            position.get("seed"), position.get("batch_size"))
        logging.info("Resumed from %s at step %d.", checkpointer.directory, start_step)
    else:
        state, start_step = initial_state(config, stage, tx, mesh), 0

    evaluation = config.get("evaluation", None) or {}
    validate_every = int(evaluation.get("every_steps", 0) or 0) if validate is not None else 0
    record = ValidationRecord(workdir, evaluation.get("early_stop_drop", 0.0) or 0.0) if validate_every else None
    if record is not None and record.stopped_at is not None:
        logging.info("%s stopped early at step %d (validation %.4g, best %.4g at step %d); not training further.",
                     workdir, record.stopped_at, record.history[-1][1], record.best_score, record.best_step)
        checkpointer.close()
        return state
    best_checkpointer = (ckpt_lib.Checkpointer(best_checkpoint_dir(workdir), max_to_keep=1)
                         if record is not None else None)

    step_fn = make_train_step(stage, mesh, config.seed)
    logger = MetricLogger(workdir, enabled=is_main, tensorboard=config.get("tensorboard", True),
                          start_step=start_step)
    config_dict = json.loads(config.to_json_best_effort())
    if is_main:
        (epath.Path(workdir) / "config.json").write_text(json.dumps(config_dict, indent=1, sort_keys=True))

    def position(step):
        return {"step": step, "seed": config.seed, "batch_size": config.batch_size, "process_count": n_proc}

    total = int(config.total_steps)
    log_every = max(1, int(config.get("log_every_steps", 50)))
    ckpt_every = max(1, int(config.get("checkpoint_every_steps", 1000)))
    pending: list[tuple[int, dict]] = []
    last_saved = start_step if restored is not None else None
    timer = {"time": time.time(), "step": start_step}  # rate over the last logging window

    def flush(step):
        """Fetches pending metrics (a host sync), runs the NaN guard, logs means."""
        if not pending:
            return
        fetched = [(s, jax.device_get(m)) for s, m in pending]
        pending.clear()
        for s, m in fetched:
            if not m["finite"]:
                raise NonFiniteLossError(
                    f"non-finite loss or gradient at step {s} (loss={float(m['loss'])}); the update was not "
                    f"applied and training stopped. Last good checkpoint: step {last_saved} in "
                    f"{checkpointer.directory}.")
        means = {k: float(np.mean([m[k] for _, m in fetched])) for k in fetched[-1][1] if k != "finite"}
        now = time.time()
        rate = (step - timer["step"]) / max(now - timer["time"], 1e-9)
        timer.update(time=now, step=step)
        means["steps_per_second"] = rate
        logger.write(step, means)
        if is_main:
            logging.info("step %d/%d  loss %.5g  %.2f steps/s  ETA %s", step, total, means["loss"], rate,
                         format_eta((total - step) / rate if rate > 0 else float("inf")))

    def save(step):
        nonlocal last_saved
        if last_saved == step:
            return
        checkpointer.save(step, state, config_dict, position(step))
        last_saved = step

    step = start_step
    try:
        with SigtermFlag() as sigterm:
            iterator = stage.make_iterator(start_step, jax.process_index(), n_proc)
            while step < total:
                if step == start_step and sigterm.received:  # a notice during startup or compilation
                    logging.warning("Preempted before step %d: nothing trained in this run; exiting. The same "
                                    "command resumes from %s.", start_step + 1,
                                    f"step {start_step}" if restored is not None else "the start")
                    break
                batch = next(iterator)
                state, metrics = step_fn(state, global_batch(batch, mesh))
                step += 1
                pending.append((step, metrics))
                preempt = preemption_requested(sigterm, step)
                if step % log_every == 0 or step == total or preempt or step % ckpt_every == 0:
                    flush(step)
                if step % ckpt_every == 0 or step == total or preempt:
                    save(step)
                if preempt:
                    logging.warning("Preempted: checkpoint of step %d written to %s; exiting.", step,
                                    checkpointer.directory)
                    break
                if record is not None and (step % validate_every == 0 or step == total):
                    flush(step)
                    score = float(validate(state))
                    is_best, stop = record.add(step, score)
                    logger.write(step, {"validation": score})
                    logging.info("step %d: validation %.4g (best %.4g at step %s)", step, score, record.best_score,
                                 record.best_step)
                    if is_best:
                        best_checkpointer.save(step, state, config_dict, position(step))
                    if stop:
                        save(step)
                    if is_main:
                        record.write()
                    if stop:
                        logging.warning("Early stop at step %d: validation %.4g is more than %.4g below the best "
                                        "%.4g (step %d); the best state is in %s.", step, score, record.drop,
                                        record.best_score, record.best_step, best_checkpoint_dir(workdir))
                        break
    finally:
        checkpointer.close()  # waits for async saves: the last good checkpoint is complete on disk.
        if best_checkpointer is not None:
            best_checkpointer.close()
        logger.close()
    return state
