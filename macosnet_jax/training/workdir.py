"""A run's work dir: checking it, the validation record and early stop (`validation.json`), the best checkpoint,
restoring or refusing a checkpoint, and when a SIGTERM (preemption) stops the loop."""
from __future__ import annotations

import json
import math
import os
import uuid

import jax
from absl import logging
from etils import epath

from macosnet_jax import checkpoint as ckpt_lib
from macosnet_jax import errors
from macosnet_jax.preemption import SigtermFlag


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


def preemption_requested(flag: SigtermFlag, step: int) -> bool:
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


def restore_or_refuse(checkpointer: ckpt_lib.Checkpointer, abstract, start_over: bool):
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
