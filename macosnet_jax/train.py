"""Training machinery: TrainState, optimizer groups, the data-parallel step, and the training loop.

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
import logging as py_logging
import math
import os
import re
import time
import uuid
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from etils import epath
from flax import traverse_util
from flax.training import train_state
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from macosnet_jax import checkpoint as ckpt_lib
from macosnet_jax import errors
from macosnet_jax.preemption import SigtermFlag
# The config helpers and the stage API live below the trainer; re-exported here as part of its public surface.
from macosnet_jax.experiment_config import base_config, epochs_to_steps, parse_config_arg  # noqa: F401
from macosnet_jax.stage_api import LossFn, Stage, build_stage, register_stage  # noqa: F401


# ------------------------------------------------------------------------------------------------------------
# State and optimizer
# ------------------------------------------------------------------------------------------------------------


class TrainState(train_state.TrainState):
    """TrainState with BatchNorm statistics and frozen (checkpointed, never optimized) variables."""
    batch_stats: Any = None
    frozen: Any = None


def param_labels(params: Any, rules: Sequence[Sequence[str]], default: str = "default") -> Any:
    """Labels every parameter with the group of the first rule whose regex matches its path ('a/b/kernel').

    rules: [(regex, label), ...], searched with `re.search`. Unmatched parameters get `default`.
    """
    compiled = [(re.compile(rx), label) for rx, label in rules]

    def label(path, _):
        key = "/".join(str(p) for p in path)
        return next((lab for rx, lab in compiled if rx.search(key)), default)

    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict({k: label(k, v) for k, v in flat.items()})


def learning_rate_schedule(base_lr: float, boundaries: Sequence[int] = (),
                           multipliers: Sequence[float] = ()) -> optax.Schedule:
    """Piecewise constant: base_lr * [1, *multipliers][number of boundaries <= step].

    E.g. CNNGeo's Adam 1e-3 then 2e-4: base_lr=1e-3, boundaries=[steps of 50 epochs], multipliers=[0.2].
    """
    if len(boundaries) != len(multipliers):
        raise ValueError(f"optimizer.lr_boundaries ({list(boundaries)}) and optimizer.lr_multipliers "
                         f"({list(multipliers)}) must have the same length")
    values = jnp.asarray([1.0, *multipliers], jnp.float32) * base_lr
    bounds = jnp.asarray(list(boundaries), jnp.int32)
    return lambda step: values[jnp.searchsorted(bounds, step, side="right")]


def _base_optimizer(name: str, learning_rate: optax.Schedule, opt: ml_collections.ConfigDict):
    if name == "adam":
        return optax.adam(learning_rate, b1=opt.get("b1", 0.9), b2=opt.get("b2", 0.999), eps=opt.get("eps", 1e-8))
    if name == "adamw":
        return optax.adamw(learning_rate, weight_decay=opt.get("weight_decay", 1e-4))
    if name == "sgd":
        return optax.sgd(learning_rate, momentum=opt.get("momentum", 0.9) or None)
    raise ValueError(f"config.optimizer.name='{name}' is unknown; expected adam, adamw or sgd")


def make_optimizer(opt: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """Optimizer from `config.optimizer`.

    Fields: name (adam|adamw|sgd), learning_rate, lr_boundaries, lr_multipliers (shared schedule shape),
    param_groups [(regex, label)] (first match wins, unmatched -> 'default'), group_lr {label: learning rate},
    frozen_groups [label, ...] (updates set to zero, no optimizer state), grad_clip_norm (0 = off).
    """
    groups = dict(opt.get("group_lr", None) or {})
    frozen = set(opt.get("frozen_groups", ()) or ())
    rules = [tuple(r) for r in (opt.get("param_groups", ()) or ())]
    known = {lab for _, lab in rules} | {"default"}
    for label in set(groups) | frozen:
        if label not in known:
            raise ValueError(f"config.optimizer: group '{label}' has no rule in param_groups {rules}")
    boundaries, multipliers = opt.get("lr_boundaries", ()), opt.get("lr_multipliers", ())

    def group_tx(label):
        if label in frozen:
            return optax.set_to_zero()
        lr = groups.get(label, opt.learning_rate)
        return _base_optimizer(opt.name, learning_rate_schedule(lr, boundaries, multipliers), opt)

    def labels_checked(params):
        # A group with its own learning rate or frozen, whose rule matches nothing (a renamed module, a typo in
        # the regex), would silently train at the default rate: say so at optimizer init instead.
        tree = param_labels(params, rules)
        used = set(jax.tree_util.tree_leaves(tree))
        unused = sorted((set(groups) | frozen) - used)
        if unused:
            raise ValueError(f"config.optimizer: group(s) {unused} match no parameter (rules {rules}; parameter "
                             f"paths look like {next(iter(traverse_util.flatten_dict(params)), ())})")
        return tree

    labels = sorted(known)
    tx = optax.multi_transform({lab: group_tx(lab) for lab in labels}, labels_checked)
    if opt.get("grad_clip_norm", 0.0):
        tx = optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), tx)
    return tx


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
        new_state = state.apply_gradients(grads=grads, batch_stats=new_batch_stats)
        # Keep the old state on a non-finite step: where() rather than cond, both sides are already computed.
        new_state = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new_state, state)
        metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads),
                       finite=finite.astype(jnp.float32))
        return new_state, metrics

    return jax.jit(step, out_shardings=(rep, rep), donate_argnums=(0,))


# ------------------------------------------------------------------------------------------------------------
# Logging
# ------------------------------------------------------------------------------------------------------------


class _DropChattyInfo(py_logging.Filter):
    """Orbax logs every file it writes at INFO; keep its warnings and errors, drop the rest."""

    def filter(self, record):
        return record.levelno >= py_logging.WARNING or "/orbax/" not in record.pathname


def quiet_checkpoint_logging() -> None:
    """Installs the filter on the root and absl log handlers (call once, after absl parsed its flags)."""
    for handler in py_logging.getLogger().handlers + py_logging.getLogger("absl").handlers:
        handler.addFilter(_DropChattyInfo())


class MetricLogger:
    """Writes scalar metrics to `<workdir>/metrics.jsonl` and TensorBoard (`<workdir>/tb`), process 0 only.

    Work dirs may be URLs (gs://...): object stores cannot append, so there the JSONL file is rewritten whole at
    each write (it stays small: one line per logged step).
    """

    def __init__(self, workdir: str, enabled: bool, tensorboard: bool = True, start_step: int | None = None):
        self.enabled = enabled
        self._path = epath.Path(workdir) / "metrics.jsonl"
        self._remote = "://" in str(workdir)
        self._lines: list[str] = []
        if enabled and self._path.exists():
            self._lines = self._path.read_text().splitlines(keepends=True)
            if start_step is not None:  # a resumed run logs the steps after its checkpoint again: drop them
                kept = lines_up_to_step(self._lines, start_step)
                if len(kept) != len(self._lines):
                    self._lines = kept
                    self._path.write_text("".join(kept))
        self._jsonl = open(self._path, "a") if enabled and not self._remote else None
        self._tb = None
        if enabled and tensorboard:
            try:
                from clu import metric_writers
                self._tb = metric_writers.SummaryWriter(str(epath.Path(workdir) / "tb"))
            except ImportError:  # tensorboard is a declared dependency; stay usable without it.
                logging.warning("clu/tensorboard not importable: metrics go to metrics.jsonl only")

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        line = json.dumps({"step": int(step), **{k: float(v) for k, v in scalars.items()}}) + "\n"
        if self._remote:
            self._lines.append(line)
            self._path.write_text("".join(self._lines))
        else:
            self._jsonl.write(line)
            self._jsonl.flush()
        if self._tb is not None:
            self._tb.write_scalars(int(step), dict(scalars))

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()


def lines_up_to_step(lines: Sequence[str], step: int) -> list[str]:
    """The metrics.jsonl lines whose "step" is <= `step` (a torn last line, from a kill mid-write, is dropped)."""
    kept = []
    for line in lines:
        try:
            if int(json.loads(line)["step"]) <= step:
                kept.append(line if line.endswith("\n") else line + "\n")
        except (ValueError, KeyError, TypeError):
            continue
    return kept


def _format_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"


# ------------------------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------------------------


class NonFiniteLossError(RuntimeError):
    """The loss or the gradients became NaN/Inf; training stopped, the last good checkpoint is kept."""


def check_workdir(workdir: str) -> str:
    """Creates the work dir (local path or gs://...) and checks it is writable; a clear error otherwise."""
    workdir = ckpt_lib.absolute(workdir)
    try:
        path = epath.Path(workdir)
        path.mkdir(parents=True, exist_ok=True)
        # Unique per call: jobs that share a work dir (parallel ablation runs resuming one finished stage) must not
        # delete each other's probe.
        probe = path / f".write_probe_{jax.process_index()}_{os.getpid()}_{uuid.uuid4().hex}"
        probe.write_text("ok")
        probe.unlink()
    except Exception as e:  # noqa: BLE001 - OSError locally, various errors from object stores
        raise errors.UserError(f"--workdir {workdir} is not a writable directory: {type(e).__name__}: {e}") from e
    return workdir


def _preemption_requested(flag: SigtermFlag, step: int) -> bool:
    """Single process: our SIGTERM flag. Several: JAX's preemption sync point (every process sees the same step)."""
    if jax.process_count() == 1:
        return flag.received
    from jax.experimental import multihost_utils
    try:
        return multihost_utils.reached_preemption_sync_point(step)
    except RuntimeError as e:  # preemption service disabled (jax_enable_preemption_service=False)
        if not getattr(flag, "warned", False):
            logging.warning("No preemption checkpoints: %s", e)
            flag.warned = True
        return False


def merge_initial_weights(state: TrainState, variables: Mapping, prefix: str, source: str,
                          sharding: NamedSharding) -> TrainState:
    """`state` with the matching arrays of variables {'params', 'batch_stats'} (a previous run or torch weights).

    prefix: where the tree goes ('' the root; e.g. 'matching': a MatchingModel inside MaCoSNet). A tree that
    already has the prefix at its top level (e.g. a joint run continued by SPair fine-tuning) is merged as is; a
    bare tree is nested under it. No parameter copied is an error naming `source`.
    """
    for collection in ("params", "batch_stats"):
        tree = variables.get(collection, {})
        if prefix and prefix not in tree:
            tree = {prefix: tree}
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


class ValidationRecord:
    """Validation scores of a run, its best step and whether it stopped early: `<workdir>/validation.json`.

    Early stopping (SPEC §7.3, the released joint script): training ends once a score falls more than
    `drop` below the best so far. The record survives restarts, so a resumed run keeps its best and a run that
    already stopped early is not trained further.
    """

    def __init__(self, workdir: str, drop: float):
        self.path = epath.Path(workdir) / "validation.json"
        self.drop = float(drop)
        self.history: list[tuple[int, float]] = []
        self.best_step: int | None = None
        self.best_score = -math.inf
        self.stopped_at: int | None = None
        if self.path.exists():
            try:
                saved = json.loads(self.path.read_text())
                self.history = [(int(s), float(v)) for s, v in saved["history"]]
                self.best_step = saved["best_step"]
                if self.best_step is not None:  # no finite score yet: best_score stays -inf
                    self.best_score = float(saved["best_score"])
                self.stopped_at = saved.get("stopped_at")
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{self.path}: unreadable validation record ({type(e).__name__}: {e}); move it "
                                 "aside to restart the best-model tracking") from e

    def add(self, step: int, score: float) -> tuple[bool, bool]:
        """Records a score; returns (is_new_best, stop_now). A NaN score is recorded but never best."""
        self.history.append((int(step), float(score)))
        is_best = math.isfinite(score) and score > self.best_score
        if is_best:
            self.best_step, self.best_score = int(step), float(score)
        stop = self.drop > 0 and self.best_step is not None and not score >= self.best_score - self.drop
        if stop:
            self.stopped_at = int(step)
        return is_best, stop

    def write(self) -> None:
        self.path.write_text(json.dumps({"history": self.history, "best_step": self.best_step,
                                         "best_score": self.best_score if self.best_step is not None else None,
                                         "stopped_at": self.stopped_at, "early_stop_drop": self.drop}, indent=1))


def best_checkpoint_dir(workdir: str) -> str:
    """Where the best-validation state of a run is kept (a checkpoints folder; `load_variables` reads it)."""
    return os.path.join(ckpt_lib.absolute(workdir), "best")


def _restore_or_refuse(checkpointer: ckpt_lib.Checkpointer, abstract: TrainState, start_over: bool):
    """`restore_latest`, except that a work dir whose checkpoints were all unreadable (now, or on an earlier
    start: they are in checkpoints.corrupt/) is not silently trained again from step 0 unless `start_over`."""
    try:
        restored = checkpointer.restore_latest(abstract)
    except ckpt_lib.UnreadableCheckpointsError as e:
        error = e
        restored = None
    else:
        error = None
        if restored is None and checkpointer.quarantined():
            error = ckpt_lib.UnreadableCheckpointsError(
                checkpointer.directory,
                sorted({int(n.split("-")[0]) for n in checkpointer.quarantined()}, reverse=True),
                ["moved there on an earlier start"])
    if error is None:
        return restored
    if not start_over:
        checkpointer.close()
        raise ckpt_lib.UnreadableCheckpointsError(
            error.directory, error.tried, error.errors,
            hint=". Nothing was trained; to train again from step 0 in this work dir, pass --start_over") from None
    logging.warning("%s; starting over from step 0 as asked (--start_over).", error)
    return None


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
    restored = _restore_or_refuse(checkpointer, abstract, start_over)
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
                         _format_eta((total - step) / rate if rate > 0 else float("inf")))

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
                preempt = _preemption_requested(sigterm, step)
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
