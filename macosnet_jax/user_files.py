"""The user's own files: images of any format Pillow reads, point lists (JSON/CSV), collection folders.

What `macosnet-predict` (and any tool run on a user's photos) reads, with one conversion rule for every pixel
format so that a 16-bit PNG, a palette GIF with transparency and a float TIFF all arrive as uint8 RGB; a file that
is missing or unreadable is an `InputError` naming it (a `UserError`: one line, exit status 2 in the CLIs).

How pixels are converted is `READING_RULE` (printed by `macosnet-predict --help`).
"""
from __future__ import annotations

import csv
import json
import pathlib
import sys

import numpy as np

from macosnet_jax import errors

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
READING_RULE = """Image reading rule (any size and file format Pillow reads; pixels are taken as stored, EXIF rotation is not
applied, so point coordinates refer to the file's pixel grid): 8-bit RGB as is; grey, palette, CMYK, YCbCr
converted to RGB (grey replicated); images with transparency (RGBA, LA, palette with transparency) composited
over white; 16-bit integer images (PNG 'I;16', 'I') scaled to 0..255 by v / 257 (rounded) so full range maps to
full range; float images ('F') taken as 0..1 if their maximum is <= 1 (then x 255), else clipped to 0..255.
A missing or unreadable file stops the command with an error that names it; in collection mode every image is
read first and all the unreadable ones are listed (`--skip-bad` goes on without them)."""


class InputError(errors.UserError):
    """A problem with the user's input (paths, files, arguments): reported as one line, exit status 2."""


def _to_rgb_uint8(image, path):
    """A Pillow image -> uint8 (H, W, 3) by the rule in the module docstring."""
    from PIL import Image  # noqa: PLC0415

    mode = image.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        values = np.asarray(image, dtype=np.float64)
        grey = np.clip(np.round(values / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    if mode == "F":
        values = np.asarray(image, dtype=np.float64)
        values = np.where(np.isfinite(values), values, 0.0)
        if values.size and values.max() <= 1.0:
            values = values * 255.0
        grey = np.clip(np.round(values), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"), np.uint8)
    return np.asarray(image.convert("RGB"), np.uint8)


def load_image(path):
    """Reads an image file -> uint8 (H, W, 3) RGB. Raises InputError naming the file if it is missing or unreadable."""
    from PIL import Image, UnidentifiedImageError  # noqa: PLC0415

    path = pathlib.Path(path)
    if not path.exists():
        raise InputError(f"image file not found: {path}")
    if not path.is_file():
        raise InputError(f"not an image file (is it a folder?): {path}")
    try:
        with Image.open(path) as image:
            image.load()
            array = _to_rgb_uint8(image, path)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise InputError(f"cannot read image {path}: {error}") from error
    if array.ndim != 3 or array.shape[0] < 2 or array.shape[1] < 2:
        raise InputError(f"image {path} is too small or malformed: decoded shape {array.shape}")
    return array


def load_points(path):
    """B's points from a JSON or CSV file -> (P, 2) float64 xy 1-indexed pixels (see the module docstring)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise InputError(f"points file not found: {path}")
    text = path.read_text()
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
            rows = data["points"] if isinstance(data, dict) else data
        else:
            rows = [r for r in csv.reader(text.splitlines()) if r and any(c.strip() for c in r)]
            if rows and not _is_number(rows[0][0]):
                rows = rows[1:]  # header
            rows = [[float(c) for c in r[:2]] for r in rows]
        points = np.asarray(rows, np.float64)
    except (ValueError, KeyError, TypeError, json.JSONDecodeError) as error:
        raise InputError(f"cannot read points from {path}: {error}") from error
    if points.ndim != 2 or points.shape[1] != 2 or points.shape[0] == 0:
        raise InputError(f"points file {path} must hold a non-empty list of [x, y] pairs; got shape {points.shape}")
    return points


def read_collection(folder, skip_bad=False, prog="macosnet-predict"):
    """The images of a collection folder, every one read before any is used -> (files, uint8 (H, W, 3) images).

    InputError listing every unreadable image (and why), unless `skip_bad`: then they are left out with a warning on
    stderr (prefixed by `prog`) naming them. InputError when no readable image remains.
    """
    files = list_collection(folder)
    good, images, bad = [], [], []
    for path in files:
        try:
            images.append(load_image(path))
            good.append(path)
        except InputError as error:
            bad.append(str(error))
    if bad and not skip_bad:
        raise InputError(f"{len(bad)} of {len(files)} images in {folder} cannot be used ({'; '.join(bad)}); fix or "
                       "remove them, or pass --skip-bad to go on without them")
    if bad:
        print(f"{prog}: warning: skipping {len(bad)} unreadable images ({'; '.join(bad)})", file=sys.stderr)
    if not good:
        raise InputError(f"none of the {len(files)} images in collection folder {folder} can be read")
    return good, images


def _is_number(text):
    try:
        float(text)
        return True
    except ValueError:
        return False


def list_collection(folder):
    """Sorted image files of a folder (by extension); InputError if it is missing or holds none."""
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        raise InputError(f"collection folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise InputError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in collection folder {folder}")
    stems = [p.stem for p in files]
    duplicates = sorted({s for s in stems if stems.count(s) > 1})
    if duplicates:  # outputs are named by stem: two files would write the same mask
        raise InputError(f"collection folder {folder} has several images named {', '.join(duplicates)} "
                       "(different extensions); rename them")
    return files
