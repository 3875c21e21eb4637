"""Orbax checkpoints of a training run: state + config + data position, resume, fallback, stage-to-stage init.

One checkpoint step holds three items (`orbax.checkpoint.args.Composite`):
  state   the TrainState as a plain nested dict (`flax.serialization.to_state_dict`): step, params, batch_stats,
          frozen, opt_state. A dict, not the Python class, so a checkpoint can be read back without the code that
          wrote it (a later stage loads only `params` / `batch_stats` from it).
  config  the run's ml_collections config, as JSON (what produced these weights).
  meta    the data position (step, seed, global batch, process count) and the *signature* of the state: the
          shape and dtype of every leaf. The signature is checked before any array is read, so a checkpoint of a
          different model fails with a message naming the first differing parameter instead of an Orbax shape
          error deep in tensorstore, and nothing in the work dir is touched.

Restoring always goes through an abstract target whose leaves carry the *current* mesh's shardings
(`jax.ShapeDtypeStruct(..., sharding=...)`): Orbax needs that to restore onto a different device count (saved on 4
devices, restored on 1 or 2). Saves are asynchronous; call `wait_until_finished()` before the process exits.

Every read path (training's resume, `load_variables` for init_from / Matcher / predict / the eval job) goes
through one reader, `newest_readable`: the newest step that restores. A step that cannot be read (a crash
mid-write that left a finalised but broken step, a truncated file, an empty step folder) is named in a warning,
moved aside to `<dir>.corrupt/` and the previous step is tried; when no step restores, `UnreadableCheckpointsError`
lists the steps tried. Half-written steps (Orbax's `*.orbax-checkpoint-tmp-*` folders) are never seen as steps.
"""
from __future__ import annotations

import os
import time
from typing import Any, Callable, Mapping, TypeVar

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from flax import serialization
from flax import traverse_util


def absolute(path: Any) -> str:
    """Absolute local path, or the URL unchanged (gs://..., where Orbax and etils.epath work directly)."""
    path = os.fspath(path)
    return path if "://" in path else os.path.abspath(path)


class CheckpointError(RuntimeError):
    """A checkpoint could not be used."""


class IncompatibleCheckpointError(CheckpointError):
    """The checkpoint holds a different model (parameter names, shapes or dtypes differ)."""


class UnreadableCheckpointsError(CheckpointError):
    """A checkpoints folder has steps, but none of them could be read (each was moved to `<dir>.corrupt/`)."""

    def __init__(self, directory: str, tried: list[int], errors: list[str], hint: str = ""):
        self.directory, self.tried, self.errors = directory, list(tried), list(errors)
        super().__init__(f"no checkpoint in {directory} could be read (tried steps {', '.join(map(str, tried))}, "
                         f"moved to {directory}.corrupt/; {errors[0] if errors else ''}){hint}")


T = TypeVar("T")


def _path_key(path: tuple) -> str:
    return "/".join(str(p) for p in path)


def state_signature(tree: Any) -> dict[str, list]:
    """Shape and dtype of every leaf: {'params/conv/kernel': [[3, 3, 3, 8], 'float32'], ...}.

    `tree` is a nested dict (a state dict) whose leaves are arrays or `jax.ShapeDtypeStruct`s.
    """
    flat = traverse_util.flatten_dict(tree, keep_empty_nodes=False)
    return {_path_key(k): [list(np.shape(v)), str(np.dtype(v.dtype))] for k, v in sorted(flat.items())}


def signature_mismatch(saved: Mapping[str, list], expected: Mapping[str, list]) -> str | None:
    """A readable description of the first differences between two signatures, or None if they agree."""
    problems = []
    order = {"params": 0, "batch_stats": 1, "frozen": 2}  # the model's own variables first, optimizer last
    for key in sorted(set(saved) | set(expected), key=lambda k: (order.get(k.split("/")[0], 3), k)):
        if key not in expected:
            problems.append(f"'{key}' is in the checkpoint but not in the model")
        elif key not in saved:
            problems.append(f"'{key}' is in the model but not in the checkpoint")
        elif list(saved[key][0]) != list(expected[key][0]) or saved[key][1] != expected[key][1]:
            problems.append(f"'{key}': checkpoint has shape {tuple(saved[key][0])} {saved[key][1]}, "
                            f"model expects {tuple(expected[key][0])} {expected[key][1]}")
    if not problems:
        return None
    more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
    return "; ".join(problems[:5]) + more


def abstract_from_signature(signature: Mapping[str, list], sharding: jax.sharding.Sharding) -> dict:
    """Nested dict of `ShapeDtypeStruct`s (with `sharding`) rebuilt from a saved signature."""
    flat = {tuple(k.split("/")): jax.ShapeDtypeStruct(tuple(shape), np.dtype(dtype), sharding=sharding)
            for k, (shape, dtype) in signature.items()}
    return traverse_util.unflatten_dict(flat)


def with_sharding(abstract_tree: Any, sharding: jax.sharding.Sharding) -> Any:
    """Gives every leaf of an abstract tree (from `jax.eval_shape`) the given sharding."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), abstract_tree)


class Checkpointer:
    """Async Orbax `CheckpointManager` over `directory`, keeping the newest `max_to_keep` steps.

    Every process of a multi-process run must create it and call save/restore (Orbax coordinates the writes).
    """

    def __init__(self, directory: str, max_to_keep: int = 3, async_save: bool = True):
        self.directory = absolute(directory)
        self._max_to_keep = max_to_keep
        self._async = async_save
        self._manager = self._make_manager()

    def _make_manager(self) -> ocp.CheckpointManager:
        options = ocp.CheckpointManagerOptions(max_to_keep=self._max_to_keep, create=True,
                                               enable_async_checkpointing=self._async)
        return ocp.CheckpointManager(self.directory, options=options)

    # -- writing ---------------------------------------------------------------------------------------------
    def save(self, step: int, state: Any, config: Mapping[str, Any] | None = None,
             data_position: Mapping[str, Any] | None = None) -> None:
        """Starts an async save of `state` (a flax struct / TrainState) with the config and data position."""
        state_dict = serialization.to_state_dict(state)
        meta = {"data_position": dict(data_position or {}), "signature": state_signature(state_dict),
                "saved_at": time.time()}
        self._manager.save(int(step), args=ocp.args.Composite(
            state=ocp.args.StandardSave(state_dict),
            config=ocp.args.JsonSave(dict(config or {})),
            meta=ocp.args.JsonSave(meta)))

    def wait_until_finished(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()

    # -- reading ---------------------------------------------------------------------------------------------
    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def read_json(self, step: int) -> tuple[dict, dict]:
        """(config, meta) of a step, without reading any array."""
        out = self._manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore(),
                                                                  meta=ocp.args.JsonRestore()))
        if not isinstance(out["meta"], dict) or "signature" not in out["meta"]:
            raise CheckpointError(f"{self.directory}/{step}/meta: no 'signature' key (not a macosnet_jax "
                                  "checkpoint, or a broken one)")
        return dict(out["config"] or {}), dict(out["meta"])

    def restore_state_dict(self, step: int, abstract_state_dict: Any, partial: bool = False) -> dict:
        """Reads the state dict of `step` into the shardings carried by `abstract_state_dict`.

        partial: read only the leaves present in `abstract_state_dict` (e.g. params without optimizer state).
        """
        if partial:
            args = ocp.args.PyTreeRestore(item=abstract_state_dict, partial_restore=True,
                                          restore_args=ocp.checkpoint_utils.construct_restore_args(
                                              abstract_state_dict))
        else:
            args = ocp.args.StandardRestore(abstract_state_dict)
        return self._manager.restore(step, args=ocp.args.Composite(state=args))["state"]

    def newest_readable(self, restore_step: Callable[[int], T]) -> tuple[int, T] | None:
        """The newest step that `restore_step(step)` reads: (step, its result), or None when there is no step.

        A step whose read raises is named in a warning and moved to `<dir>.corrupt/`, then the previous step is
        tried. `IncompatibleCheckpointError` (a different model) is not a broken step: it propagates and nothing
        is moved. Raises UnreadableCheckpointsError, listing the steps tried, when no step can be read.
        """
        tried, errors = [], []
        for step in sorted(self.all_steps(), reverse=True):
            tried.append(step)
            try:
                return step, restore_step(step)
            except IncompatibleCheckpointError:
                raise
            except Exception as e:  # noqa: BLE001 - any read failure means this step is unusable.
                errors.append(f"step {step}: {_first_line(e)}")
                self._quarantine(step, e)
        if tried:
            raise UnreadableCheckpointsError(self.directory, tried, errors)
        return None

    def restore_latest(self, abstract_state: Any) -> tuple[Any, dict, dict] | None:
        """Restores the newest readable step into a state shaped like `abstract_state`.

        Args:
          abstract_state: the state to restore into (e.g. a TrainState of `ShapeDtypeStruct`s with the current
            shardings, from `jax.eval_shape` + `with_sharding`), used both as Orbax target and as the template
            that turns the saved dict back into the state class.
        Returns:
          (state, config, meta) or None when the directory holds no checkpoint.
        Raises:
          IncompatibleCheckpointError: the newest readable checkpoint is of a different model. Nothing is
            moved or deleted in that case.
          UnreadableCheckpointsError: there are steps but none can be read (see `newest_readable`).
        """
        template = serialization.to_state_dict(abstract_state)
        expected = state_signature(template)

        def restore(step):
            config, meta = self.read_json(step)
            mismatch = signature_mismatch(meta["signature"], expected)
            if mismatch:
                raise IncompatibleCheckpointError(
                    f"checkpoint {self.directory}/{step} was written by a different model than the one configured "
                    f"now: {mismatch}. Use a new --workdir, or point config.init_from at it to reuse the weights "
                    "that fit; nothing was overwritten.")
            restored = self.restore_state_dict(step, template)
            return serialization.from_state_dict(abstract_state, restored), config, meta

        found = self.newest_readable(restore)
        return None if found is None else found[1]

    def quarantined(self) -> list[str]:
        """Names of the steps moved aside to `<dir>.corrupt/` ('<step>-<unix time>'), oldest name first."""
        corrupt = epath.Path(self.directory + ".corrupt")
        return sorted(p.name for p in corrupt.iterdir()) if corrupt.is_dir() else []

    def _quarantine(self, step: int, error: Exception) -> None:
        """Moves an unreadable step out of the manager's directory (process 0) and rebuilds the manager."""
        target = epath.Path(self.directory + ".corrupt") / f"{step}-{int(time.time())}"
        logging.warning("Checkpoint %s/%d is unreadable (%s); moving it to %s and falling back to the "
                        "previous checkpoint.", self.directory, step, _first_line(error), target)
        if jax.process_index() == 0:
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                (epath.Path(self.directory) / str(step)).rename(target)
            except OSError as e:  # a read-only folder (someone else's run): skip the step without moving it
                logging.warning("Could not move %s/%d aside (%s); skipping it.", self.directory, step, e)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices(f"quarantine_{step}")
        self._manager.close()
        self._manager = self._make_manager()


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0][:300] if text else ''}"


def checkpoint_dir(workdir: str) -> str:
    """Where a run keeps its checkpoints inside its work dir."""
    return str(epath.Path(absolute(workdir)) / "checkpoints")


def load_variables(path: str, sharding: jax.sharding.Sharding, step: int | None = None) -> dict:
    """Reads `params`, `batch_stats` (and `frozen`) of another run's checkpoint, e.g. the previous stage.

    Args:
      path: a work dir (its `checkpoints/` is used) or a checkpoints directory.
      sharding: where to put the arrays (usually replicated over the current mesh).
      step: which step; None: the newest that can be read (see `Checkpointer.newest_readable`).
    Returns:
      {'params': ..., 'batch_stats': ..., 'frozen': ...} as nested dicts of arrays (missing collections: {}).
    """
    path = absolute(path)
    if not epath.Path(path).is_dir():
        raise CheckpointError(f"{path} is not a directory (expected a work dir or its checkpoints/ folder)")
    directory = checkpoint_dir(path) if epath.Path(checkpoint_dir(path)).is_dir() else path
    ckpt = Checkpointer(directory, async_save=False)

    def restore(step):
        _, meta = ckpt.read_json(step)
        signature = {k: v for k, v in meta["signature"].items()
                     if k.split("/")[0] in ("params", "batch_stats", "frozen")}
        return ckpt.restore_state_dict(step, abstract_from_signature(signature, sharding), partial=True)

    try:
        if step is None:
            found = ckpt.newest_readable(restore)
            if found is None:
                raise CheckpointError(f"no checkpoint in {directory} (train first, or point at another run)")
            step, restored = found
        elif step not in ckpt.all_steps():
            raise CheckpointError(f"no checkpoint of step {step} in {directory} (steps there: {ckpt.all_steps()})")
        else:
            restored = restore(step)
    finally:
        ckpt.close()
    logging.info("Loaded variables of %s step %d.", directory, step)
    return {k: restored.get(k, {}) for k in ("params", "batch_stats", "frozen")}


def merge_variables(target: Any, source: Mapping, what: str) -> tuple[Any, int]:
    """Copies every leaf of `source` whose path exists in `target` with the same shape.

    Returns the merged tree (target's structure) and the number of leaves copied. A shared path with a different
    shape is an error: it means the configured model does not match the weights it is told to start from.
    """
    flat_target = traverse_util.flatten_dict(serialization.to_state_dict(target), keep_empty_nodes=True)
    flat_source = traverse_util.flatten_dict(dict(source), keep_empty_nodes=False)
    copied = 0
    for key, value in flat_source.items():
        if key not in flat_target:
            continue
        if tuple(np.shape(flat_target[key])) != tuple(np.shape(value)):
            raise IncompatibleCheckpointError(
                f"{what}: '{_path_key(key)}' has shape {tuple(np.shape(value))} there but the model expects "
                f"{tuple(np.shape(flat_target[key]))}")
        flat_target[key] = value.astype(flat_target[key].dtype) if hasattr(value, "astype") else value
        copied += 1
    merged = serialization.from_state_dict(target, traverse_util.unflatten_dict(flat_target))
    return merged, copied

