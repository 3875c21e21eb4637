"""Metric logging of a run: `<workdir>/metrics.jsonl` (resumable: lines past the restored step are dropped),
TensorBoard, the console line with its ETA, and quieter checkpoint logs."""
from __future__ import annotations

import json
import logging as py_logging
import math
from typing import Mapping, Sequence

from absl import logging
from etils import epath



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


def format_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"
