"""What the CPU demo prints and stores: one results table, the timing and where the files went.

The demo evaluates several methods (trivial baselines and trained models) under several protocols; a newcomer wants
one table with a row per method and a column per metric, blanks where a method has no such output (the mask
baselines predict no warp, the matchers no mask), then the seed, the timing and the paths. `summary` is the flat
`<method>/<metric>` dict stored in results.json (outside checks read `identity/PCK@0.1`, `centred_box/J`,
`joint/PCK@0.1`, `joint/J`, ...). The console is kept free of library chatter (backend probes, TensorFlow
banners, checkpoint bookkeeping): `quiet_logging` lets through only the demo's own lines and the trainer's
progress lines, which on a terminal overwrite each other (one line per stage).
"""
from __future__ import annotations

import logging as py_logging
import os

# (summary key suffix, table key, column, header shown)
COLUMNS = (
    ("PCK@0.05", "kp_extent", "PCK@0.05", "PCK@.05 kp"),
    ("PCK@0.1", "kp_extent", "PCK@0.1", "PCK@.1 kp"),
    ("PCK@0.1_img", "img224", "PCK@0.1", "PCK@.1 img"),
    ("P", "coseg", "P", "P"),
    ("J", "coseg", "J", "J"),
)
# Methods shown with one stream's outputs only. The mask baselines predict no warp (they use the identity) and
# co-segmentation alone does not train the matcher: no PCK columns. Matching alone does not train the decoder
# (its masks are the untrained decoder's): no P/J columns. results.txt keeps every table of every method.
MASK_ONLY = ("all_foreground", "centred_box", "coseg_only")
WARP_ONLY = ("matching_only",)
ROW_NAMES = {
    "identity": "identity transform",
    "centred_box": "centred box mask",
    "all_foreground": "all-foreground mask",
    "strong_only": "strong stage only",
    "matching_only": "matching only",
    "coseg_only": "co-segmentation only",
    "joint": "joint (MaCoSNet)",
}


def _summary_row(table: dict | None) -> dict:
    return table["rows"][table["summary_rows"][0]] if table else {}


def summarize(results: dict) -> dict:
    """{method: {table key: table JSON}} -> {'<method>/<metric>': value} for the metrics each method has.

    PCK under kp_extent (`PCK@0.05`, `PCK@0.1`) and under the image-size convention (`PCK@0.1_img`) for methods
    that predict a warp; P and J for methods that predict masks (MASK_ONLY and WARP_ONLY: one stream's only).
    """
    out = {}
    for name, tables in results.items():
        for key, table_key, column, _ in COLUMNS:
            if (name in MASK_ONLY and table_key != "coseg") or (name in WARP_ONLY and table_key == "coseg"):
                continue
            row = _summary_row(tables.get(table_key))
            if column in row:
                out[f"{name}/{key}"] = row[column]
    return out


def _minutes(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s"


def format_report(summary: dict, methods: list[str], *, title: str, notes: list[str], timing: dict,
                  files: dict) -> str:
    """The demo's console report: title, the table (one row per method), notes, timing and file lines.

    Args:
      summary: `summarize` output (missing keys print as blanks).
      methods: row order.
      title: one line above the table.
      notes: lines printed under the table (what the objective adds beyond the paper, conventions).
      timing: {label: seconds}, printed in order on one line.
      files: {label: path}, one line each.
    """
    name_width = max(len(ROW_NAMES.get(m, m)) for m in methods)
    widths = [max(len(header), 6) for *_, header in COLUMNS]
    header = " " * name_width + "  " + "  ".join(h.rjust(w) for (*_, h), w in zip(COLUMNS, widths))
    lines = ["", title, header, "-" * len(header)]
    for method in methods:
        cells = []
        for (key, *_), width in zip(COLUMNS, widths):
            value = summary.get(f"{method}/{key}")
            cells.append((f"{value:.4f}" if value is not None else "").rjust(width))
        lines.append(ROW_NAMES.get(method, method).ljust(name_width) + "  " + "  ".join(cells))
    lines += [""] + notes
    lines.append("time: " + ", ".join(f"{label} {_minutes(s)}" for label, s in timing.items()))
    lines += [f"{label}: {path}" for label, path in files.items()]
    return "\n".join(lines)


class _DemoLinesOnly(py_logging.Filter):
    """Passes warnings and errors, and INFO lines of the demo itself or the trainer's progress lines."""

    def filter(self, record: py_logging.LogRecord) -> bool:
        if record.levelno >= py_logging.WARNING:
            return True
        if record.module == "demo":
            return True
        return _is_progress(record)


def quiet_logging() -> None:
    """Console output for a newcomer: no backend probes or TensorFlow banners, plain progress lines.

    Call after absl parsed its flags and before TensorFlow is imported. TensorFlow's oneDNN notice is printed at
    load whatever the log level; the demo's input pipeline runs no op that oneDNN accelerates (gathers, casts,
    crop_and_resize), so its custom ops are switched off rather than the notice filtered.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    from absl import logging as absl_logging
    handler = absl_logging.get_absl_handler()
    handler.addFilter(_DemoLinesOnly())
    stream = getattr(getattr(handler, "python_handler", handler), "stream", None)  # absl's: sys.stderr
    handler.setFormatter(_ProgressInPlace() if _is_terminal(stream) else py_logging.Formatter("%(message)s"))


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _is_progress(record: py_logging.LogRecord) -> bool:
    return record.module == "train" and str(record.msg).startswith("step ")


class _ProgressInPlace(py_logging.Formatter):
    """On a terminal, the trainer's progress lines of a stage overwrite each other (one line per stage).

    Each progress line is written from the line's start and left open (the handler's newline is taken back with a
    carriage return, the rest of the old line erased); the next other line first closes it.
    """

    def __init__(self):
        super().__init__("%(message)s")
        self._open = False

    def format(self, record: py_logging.LogRecord) -> str:
        text = super().format(record)
        if _is_progress(record):
            self._open = True
            return "\r" + text + "\x1b[K\x1b[1A"  # the handler's newline follows; move back onto this line
        prefix = "\n" if self._open else ""
        self._open = False
        return prefix + text
