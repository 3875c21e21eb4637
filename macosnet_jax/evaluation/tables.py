"""Result tables of the benchmark drivers, and the one rule for turning names into file names.

A `ResultTable` holds per-class rows and summary rows with the convention that produced them (published numbers are
only comparable under the same one), rendered as plain text like the paper's tables and as JSON. `file_stem` is the
sanitiser every writer uses for a name that becomes a file name (pair ids, classes, `<dataset>_<split>`).
"""
from __future__ import annotations

import dataclasses
import json
import math
import pathlib

import numpy as np


@dataclasses.dataclass
class ResultTable:
    """Per-class results and summary rows, with the convention that produced them.

    rows: ordered {row name: {column: value}}; the per-class rows first, then `summary_rows` (e.g. 'mean');
    counts: {row name: number of evaluated items}. Values are floats (NaN where undefined).
    """

    title: str
    convention: str
    columns: list[str]
    rows: dict[str, dict[str, float]]
    counts: dict[str, int]
    summary_rows: list[str]
    notes: list[str] = dataclasses.field(default_factory=list)

    def to_json(self):
        """A JSON-serialisable dict (NaN becomes None)."""

        def clean(value):
            return None if value is None or (isinstance(value, float) and math.isnan(value)) else value

        return {
            "title": self.title,
            "convention": self.convention,
            "columns": list(self.columns),
            "rows": {name: {c: clean(row.get(c)) for c in self.columns} for name, row in self.rows.items()},
            "counts": dict(self.counts),
            "summary_rows": list(self.summary_rows),
            "notes": list(self.notes),
        }

    def to_text(self, classes_as_columns=False, digits=3):
        """Plain-text table; classes as rows, or as columns like the paper's tables (one row per metric)."""
        fmt = lambda v: "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"
        names = list(self.rows)
        if classes_as_columns:
            header = ["metric"] + names
            body = [[column] + [fmt(self.rows[n].get(column)) for n in names] for column in self.columns]
            body.append(["n"] + [str(self.counts.get(n, "")) for n in names])
        else:
            header = ["class"] + list(self.columns) + ["n"]
            body = [[n] + [fmt(self.rows[n].get(c)) for c in self.columns] + [str(self.counts.get(n, ""))]
                    for n in names]
        widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
        line = lambda r: "  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(r, widths)))
        rule = "-" * len(line(header))
        out = [self.title, f"convention: {self.convention}", rule, line(header), rule]
        for row in body:
            if not classes_as_columns and row[0] in self.summary_rows and out[-1] != rule:
                out.append(rule)
            out.append(line(row))
        out.append(rule)
        out.extend(f"note: {n}" for n in self.notes)
        return "\n".join(out)


def write_tables(tables, out_dir, stem="results"):
    """Writes {name: ResultTable} as `<stem>.txt` (all tables) and `<stem>.json` into out_dir; returns the paths."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text_path, json_path = out_dir / f"{stem}.txt", out_dir / f"{stem}.json"
    text_path.write_text("\n\n".join(t.to_text() for t in tables.values()) + "\n")
    json_path.write_text(json.dumps({k: t.to_json() for k, t in tables.items()}, indent=1))
    return text_path, json_path


def ordered_classes(groups, names=None):
    """Class rows in the dataset's order (the order of `names`, as the paper's tables), else alphabetical."""
    rank = {n: i for i, n in enumerate(names or ())}
    return dict(sorted(groups.items(), key=lambda item: (rank.get(item[0], len(rank)), item[0])))


def nanmean(values):
    """Mean of the non-NaN values (floats), NaN when there are none."""
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


def file_stem(name):
    """A name (pair id, class, '<dataset>_<split>') usable as ONE file name: every character other than letters,
    digits, '-', '_' and '.' becomes '_' (ids such as 'PASCAL/pair01' must not create folders)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
