"""Preemption notices (SIGTERM) for single-process training: a flag the training loop polls between steps.

A scheduler that preempts a job sends SIGTERM and waits a grace period before SIGKILL. Dying on the signal loses
every step since the last checkpoint, and a signal that arrives while the model is being built or compiled would
kill the process before the training loop has installed anything. So the CLI calls `watch()` first thing, before
JAX and the model are imported: from then on SIGTERM only sets a flag; the loop checks it after every step
(checkpoint, exit 0), and before its first step (exit 0 without training; the work dir resumes as if the run had
not started).

With several processes the handler is NOT installed: JAX's preemption service (started by
jax.distributed.initialize) owns SIGTERM and propagates the notice to every process, so that all of them agree on
the step to save at (`multihost_utils.reached_preemption_sync_point`). A Python handler would replace its handler.
This module imports nothing heavy, so installing the handler costs nothing at process start.
"""
from __future__ import annotations

import signal
import threading

from absl import logging


class SigtermFlag:
    """Sets `received` on SIGTERM instead of dying; as a context manager, installs itself for the block.

    Entering while another SigtermFlag is installed (the process-wide one of `watch()`) takes over its state, so a
    notice received before the block is not lost; leaving restores the previous handler.
    """

    def __init__(self):
        self.received = False
        self._previous = None
        self._installed = False

    def install(self) -> "SigtermFlag":
        if threading.current_thread() is not threading.main_thread():
            return self  # signal handlers can only be set from the main thread
        previous = signal.getsignal(signal.SIGTERM)
        owner = getattr(previous, "__self__", None)
        if isinstance(owner, SigtermFlag):
            self.received = self.received or owner.received
        self._previous = signal.signal(signal.SIGTERM, self._handle)
        self._installed = True
        return self

    def _handle(self, signum, frame):
        del signum, frame
        logging.warning("SIGTERM received: saving a checkpoint at the end of this step, then exiting.")
        self.received = True

    def __enter__(self):
        import jax  # here, not at import: watch() must not pay for JAX
        if jax.process_count() == 1:
            self.install()
        return self

    def __exit__(self, *exc):
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous)
            owner = getattr(self._previous, "__self__", None)
            if isinstance(owner, SigtermFlag):
                owner.received = owner.received or self.received
            self._installed = False
        return False


_PROCESS_FLAG: SigtermFlag | None = None


def watch() -> SigtermFlag:
    """Single-process runs: from now on SIGTERM sets a flag that the training loop honours (idempotent).

    Call it before anything slow (imports of JAX and the model, building, compiling); do not call it in
    multi-process runs (see the module docstring).
    """
    global _PROCESS_FLAG
    if _PROCESS_FLAG is None:
        _PROCESS_FLAG = SigtermFlag().install()
    return _PROCESS_FLAG
