"""Shared reading helpers for the manual-download tfds builders (PF-PASCAL, PF-WILLOW, TSS, SPair-71k, Internet).

Why a shared module: every builder has to (1) find its files below a user-chosen manual directory that may
hold one extra directory level, (2) read CSV / JSON annotations and fail with the file and row when they are
malformed, and (3) read images so that a corrupt file is reported (evaluation splits) or skipped with a
counted warning (training splits). Keeping these rules in one place keeps the five builders consistent.

All file access goes through `etils.epath` (never `os`/`open`), because the tfds builder test harness forbids
`os` file functions in builder modules and because epath also reads cloud buckets.
"""
from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from etils import epath
from PIL import Image

logger = logging.getLogger("macosnet_datasets")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


class DatasetFilesError(FileNotFoundError):
    """The expected files of a dataset are not where the builder looked (layout problem)."""


class AnnotationError(ValueError):
    """An annotation file (CSV row, JSON key, keypoint field, .flo file) is malformed."""


class CorruptImageError(ValueError):
    """An image file exists but cannot be decoded."""


# ----------------------------------------------------------------------------------------------------------
# Finding the dataset below the manual directory.


def _has(base: epath.Path, markers: Sequence[str]) -> bool:
    return all((base / m).exists() for m in markers)


def find_dataset_root(manual_dir: epath.PathLike, name: str, markers: Sequence[str], instructions: str,
                      max_depth: int = 3) -> epath.Path:
    """Returns the folder that contains every path in `markers` (relative paths, e.g. 'PF-dataset-PASCAL').

    Looks in `<manual_dir>/<name>/` first, then `<manual_dir>/`, each time also up to `max_depth` directory
    levels below (breadth first, sorted, so the answer is deterministic and a big image folder is only
    listed if nothing was found above it). Raises DatasetFilesError naming the resolved paths that were
    searched, the missing names and the layout instructions.
    """
    manual_dir = epath.Path(manual_dir)
    starts = [manual_dir / name, manual_dir]
    searched = []
    for start in starts:
        if not start.is_dir():
            continue
        level = [start]
        for depth in range(max_depth + 1):
            for folder in level:
                searched.append(folder)
                if _has(folder, markers):
                    return folder
            if depth < max_depth:  # never list the deepest level (it may hold thousands of files)
                level = [p for folder in level for p in sorted(folder.iterdir()) if p.is_dir()]
    shown = ", ".join(str(p) for p in searched[:8]) + (" ..." if len(searched) > 8 else "")
    raise DatasetFilesError(
        f"{name}: could not find {list(markers)} in the manual directory {manual_dir.resolve()} "
        f"(looked in {manual_dir / name} and {manual_dir}, up to {max_depth} levels below; searched: "
        f"{shown or 'nothing: neither folder exists'}).\nExpected layout:\n{instructions}")


def find_first(root: epath.Path, candidates: Sequence[str], max_depth: int = 2) -> epath.Path | None:
    """First existing `root/<c>` or `root/<sub>/<c>` (sub up to `max_depth` levels) for c in candidates."""
    level = [root]
    for depth in range(max_depth + 1):
        for folder in level:
            for c in candidates:
                if (folder / c).exists():
                    return folder / c
        if depth < max_depth:
            level = [p for folder in level for p in sorted(folder.iterdir()) if p.is_dir()]
    return None


def walk_files(folder: epath.Path, max_depth: int = 3) -> list[epath.Path]:
    """Files below `folder` up to `max_depth` levels, sorted (epath has no recursive glob on buckets)."""
    files, level = [], [folder]
    for _ in range(max_depth + 1):
        next_level = []
        for d in level:
            for p in sorted(d.iterdir()):
                (next_level if p.is_dir() else files).append(p)
        level = next_level
    return files


def index_images(folder: epath.Path) -> dict[str, epath.Path]:
    """Maps image file names (basename) below `folder` (3 levels) to their paths; duplicates are an error."""
    index: dict[str, epath.Path] = {}
    for p in walk_files(folder):
        if p.suffix.lower() in IMAGE_SUFFIXES:
            if p.name in index:
                raise DatasetFilesError(f"Two images named {p.name!r}: {index[p.name]} and {p}; "
                                        "remove the duplicate copy.")
            index[p.name] = p
    return index


def lookup_image(index: dict[str, epath.Path], value: str, where: str, folder: epath.Path) -> epath.Path:
    """Finds the image a CSV/JSON `value` (a relative path or a file name) refers to, by its file name."""
    name = value.replace("\\", "/").rsplit("/", 1)[-1].strip()
    if name not in index:
        raise DatasetFilesError(f"{where}: image {value!r} not found (looked for a file named {name!r} "
                                f"below {folder}).")
    return index[name]


# ----------------------------------------------------------------------------------------------------------
# Annotations.


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def read_csv_rows(path: epath.Path, required: Sequence[str] = (), min_columns: int = 0,
                  numeric_column: int | None = None) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Reads a CSV with a header. Returns (header, [(line number, fields)]).

    `required`: column names that must be in the header. `min_columns`: rows must have at least this many
    fields (for positional files). `numeric_column`: for positional files whose header line is optional:
    when the first line has a number in that column it is data, not a header. Errors name file and line.
    """
    text = path.read_text()
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        raise AnnotationError(f"{path}: empty CSV file (expected a header line).")
    if numeric_column is not None and len(rows[0]) > numeric_column and _is_number(rows[0][numeric_column]):
        rows = [[]] + rows  # no header line: keep line numbers true to the file
    header = [h.strip() for h in rows[0]]
    missing = [c for c in required if c not in header]
    if missing:
        raise AnnotationError(f"{path}: missing CSV column(s) {missing}; found columns {header}.")
    need = max(min_columns, len(required) and max(header.index(c) for c in required) + 1)
    out = []
    first_line = 2 if header else 1
    for line, fields in enumerate(rows[1:], start=first_line):
        if not fields or all(not f.strip() for f in fields):
            continue
        if len(fields) < need:
            raise AnnotationError(f"{path}, line {line}: {len(fields)} fields, expected at least {need} "
                                  f"(header {header}).")
        out.append((line, [f.strip() for f in fields]))
    return header, out


def parse_float_list(text: str, where: str, sep: str = ";") -> np.ndarray:
    """Parses 'x1;x2;...' into a float32 vector; `where` names file/line/column for the error."""
    try:
        return np.asarray([float(t) for t in text.split(sep) if t.strip() != ""], np.float32)
    except ValueError as e:
        raise AnnotationError(f"{where}: malformed number list {text!r} ({e}).") from None


def parse_int(text: str, where: str) -> int:
    try:
        return int(float(text))
    except ValueError:
        raise AnnotationError(f"{where}: expected an integer, got {text!r}.") from None


def keypoints_from_xy(xa: np.ndarray, ya: np.ndarray, xb: np.ndarray, yb: np.ndarray, where: str
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Stacks corresponding keypoints into ((N,2), (N,2)) float32 xy, dropping padded rows.

    A row is padding when any of its four coordinates is negative (the −1 padding of the released lists);
    rows of A and B correspond, so a row is removed from both.
    """
    n = {len(xa), len(ya), len(xb), len(yb)}
    if len(n) != 1:
        raise AnnotationError(f"{where}: keypoint lists differ in length (XA {len(xa)}, YA {len(ya)}, "
                              f"XB {len(xb)}, YB {len(yb)}).")
    kp_a = np.stack([xa, ya], -1).reshape(-1, 2).astype(np.float32)
    kp_b = np.stack([xb, yb], -1).reshape(-1, 2).astype(np.float32)
    keep = (kp_a >= 0).all(-1) & (kp_b >= 0).all(-1)
    return kp_a[keep], kp_b[keep]


def read_json(path: epath.Path, required: Iterable[str]) -> dict[str, Any]:
    """Loads a JSON object and checks that every key in `required` is present (error names file and key)."""
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise AnnotationError(f"{path}: invalid JSON ({e}).") from None
    if not isinstance(data, dict):
        raise AnnotationError(f"{path}: expected a JSON object, got {type(data).__name__}.")
    missing = [k for k in required if k not in data]
    if missing:
        raise AnnotationError(f"{path}: missing JSON key(s) {missing}; found keys {sorted(data)}.")
    return data


# ----------------------------------------------------------------------------------------------------------
# Images.


def read_image(path: epath.Path, where: str = "") -> tuple[bytes | np.ndarray, tuple[int, int]]:
    """Reads and fully decodes an image to validate it.

    Returns (what to give tfds.features.Image, (height, width)): the original file bytes when they are an
    RGB or grey JPEG/PNG (so the stored image is bit-identical to the file), else an (H, W, 3) uint8 array.
    Raises DatasetFilesError if missing and CorruptImageError if it cannot be decoded.
    """
    if not path.exists():
        raise DatasetFilesError(f"{where + ': ' if where else ''}image file {path} does not exist.")
    data = path.read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            fmt, mode = img.format, img.mode
            size = img.size
            rgb = None if (fmt in ("JPEG", "PNG") and mode in ("RGB", "L")) else np.asarray(img.convert("RGB"))
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError ...) for broken files.
        raise CorruptImageError(f"{where + ': ' if where else ''}cannot decode image {path} ({e}).") from None
    return (data if rgb is None else rgb), (size[1], size[0])


def read_mask(path: epath.Path, where: str = "") -> np.ndarray:
    """Reads a binary mask image as uint8 (H, W) with values 0/1.

    Masks stored as 0/255 (or anti-aliased grey) are thresholded at 128; masks already stored as 0/1 are kept.
    """
    if not path.exists():
        raise DatasetFilesError(f"{where + ': ' if where else ''}mask file {path} does not exist.")
    try:
        with Image.open(io.BytesIO(path.read_bytes())) as img:
            m = np.asarray(img.convert("L"))
    except Exception as e:
        raise CorruptImageError(f"{where + ': ' if where else ''}cannot decode mask {path} ({e}).") from None
    return (m > (0 if m.max() <= 1 else 127)).astype(np.uint8)


class CorruptSkipper:
    """Counts examples skipped for unreadable images in a training split and enforces a limit.

    Skipping one bad file out of thousands is what a user wants for training; evaluation splits must not
    silently shrink (the reported numbers would change), so they use `allow=False` and raise instead. More
    than max(`min_allowed`, `max_fraction` of the split) bad files means a broken extraction: raise.
    """

    def __init__(self, dataset: str, split: str, total: int, allow: bool,
                 max_fraction: float = 0.01, min_allowed: int = 10):
        self.dataset, self.split, self.total, self.allow = dataset, split, total, allow
        self.limit = max(min_allowed, int(max_fraction * total))
        self.skipped: list[str] = []

    def skip(self, error: CorruptImageError) -> None:
        """Records `error` (re-raised when skipping is not allowed or the limit is passed)."""
        if not self.allow:
            raise error
        self.skipped.append(str(error))
        if len(self.skipped) > self.limit:
            raise CorruptImageError(
                f"{self.dataset} {self.split}: more than {self.limit} unreadable images "
                f"({len(self.skipped)} so far); the extraction looks broken. Last: {error}")

    def report(self) -> None:
        """Logs the counted warning (call once the split is generated); every example skipped is an error."""
        if self.skipped and len(self.skipped) == self.total:
            raise CorruptImageError(f"{self.dataset} {self.split}: all {self.total} examples have unreadable "
                                    f"images; the extraction looks broken. First: {self.skipped[0]}")
        if self.skipped:
            logger.warning("%s %s: skipped %d of %d examples with unreadable images:\n  %s", self.dataset,
                           self.split, len(self.skipped), self.total, "\n  ".join(self.skipped))
