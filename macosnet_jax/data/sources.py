"""Data sources: what config.data names, or what a caller passes, as the in-memory arrays the iterators read.

A source is
- a config.data (`from_config`): name 'synthetic_objects' (num_images, num_categories, seed, background),
  'image_folder' (path) or 'tfds' (tfds_name, split, data_dir);
- or, to `as_in_memory`, an image array (N, H, W, 3), an image folder path, a dict of numpy arrays or a
  tf.data/tfds dataset (decoded, or encoded bytes with tfds.decode.SkipDecoding()).
Each becomes one of two sets, a dict of numpy arrays over N examples:
- 'images': 'image' (N, H, W, 3) uint8 and, where known, 'mask' (N, H, W) uint8 0/1, 'category' (N,) int32,
  'keypoints' (N, K, 2) float32 1-indexed xy pixels (-1 padding) with 'visible' (N, K) bool;
- 'pairs': 'image_a', 'image_b' (N, H, W, 3) uint8 and, where known, 'keypoints_a'/'keypoints_b',
  'visible_a'/'visible_b', 'category' (N,) int32, 'flip' (N,) int32 (1: both images mirrored).
The pair/triplet pipeline (`pipeline.make_pair_iterator`) reads either; synthetic warps (`warps.make_warp_iterator`)
read an image set (`image_set`). Both slice a set per process with `process_slice`.

Why in memory: the datasets used for training (synthetic, PF-PASCAL train, Internet, TSS) are small at the output
size, and within-category partners are random access, a gather. tfds examples and folder images are decoded and
resized (corner-aligned, SPEC §1; masks and keypoints follow) once, when loaded.
Why TensorFlow only on demand: synthetic objects and arrays need none; a folder or a tfds dataset gets it from
`tf_setup.tensorflow()` (GPUs hidden, threads bounded) when it is read.
"""
from __future__ import annotations

import functools
import os
import pathlib
import sys

import ml_collections
import numpy as np

from macosnet_jax import geometry
from macosnet_jax.data import synthetic, tf_setup

SOURCE_NAMES = ("synthetic_objects", "image_folder", "tfds")  # the values of config.data.name
IMAGE_SET_KEYS = ("image", "mask", "category", "keypoints", "visible")
PAIR_SET_KEYS = ("image_a", "image_b", "keypoints_a", "keypoints_b", "visible_a", "visible_b", "category", "flip")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")  # what an image folder is read for


def from_config(data: ml_collections.ConfigDict, image_size: int) -> dict:
    """The training set named by config.data, in memory at image_size (an image set or, from tfds, a pair set)."""
    name = data.get("name", None)
    if name == "synthetic_objects":
        return _synthetic_objects(int(data.num_images), int(image_size), int(data.seed), int(data.num_categories),
                                  str(data.get("background", "clutter")))
    if name == "image_folder":
        return {"image": load_image_folder(data.path, image_size)}
    if name == "tfds":
        tf_setup.tensorflow()  # configured before tfds runs anything
        import tensorflow_datasets as tfds

        dataset = tfds.load(data.tfds_name, split=data.split, data_dir=data.get("data_dir", None) or None)
        return as_in_memory(dataset, image_size)[1]
    raise ValueError(f"config.data.name={name!r} is unknown; expected one of {', '.join(SOURCE_NAMES)}")


@functools.lru_cache(maxsize=4)
def _synthetic_objects(num_images: int, size: int, seed: int, num_categories: int, background: str) -> dict:
    """Cached: the strong stage's two warp streams and a resumed run read the same set (callers do not mutate it)."""
    return synthetic.make_synthetic_objects(num_images, size, seed, num_categories, background)


def as_in_memory(source, image_size: int, kinds=("images", "pairs")) -> tuple[str, dict]:
    """Any supported source -> ('images' | 'pairs', dict of numpy arrays), see the module docstring.

    Arrays and dicts are used at their own size (dtypes kept; keys other than the set's are dropped); folders and
    datasets are read at image_size. kinds: the sets the caller accepts (checked before anything is read).
    """
    kind = _kind_of(source)
    if kind not in kinds:
        raise KeyError(f"the source is a set of {kind} ({_needs((kind,))}), but {' or '.join(kinds)} are needed "
                       f"({_needs(kinds)})")
    if isinstance(source, (str, os.PathLike)):
        return kind, {"image": load_image_folder(source, image_size)}
    if isinstance(source, np.ndarray):
        source = {"image": source}
    if isinstance(source, dict):
        return kind, _validated(kind, source)
    if kind == "pairs":
        return kind, materialize_pairs(source, image_size)
    return kind, materialize_images(source, image_size)


def image_set(source, image_size: int) -> dict:
    """An image set from any source (`as_in_memory` accepting image sets only)."""
    return as_in_memory(source, image_size, kinds=("images",))[1]


def _needs(kinds) -> str:
    return " or ".join({"images": "'image' (N, H, W, 3) (+ 'category')", "pairs": "'image_a'/'image_b'"}[k]
                       for k in kinds)


def _is_tf_dataset(source) -> bool:
    tf = sys.modules.get("tensorflow")  # a dataset exists only once its maker imported TensorFlow
    return tf is not None and isinstance(source, tf.data.Dataset)


def _kind_of(source) -> str:
    """'images' or 'pairs', from the type, dict keys or dataset features, without reading any example."""
    if isinstance(source, (str, os.PathLike, np.ndarray)):
        return "images"
    if isinstance(source, dict):
        keys = source
    elif _is_tf_dataset(source):
        keys = source.element_spec
        if not isinstance(keys, dict):
            raise TypeError(f"dataset elements must be dicts of features; got {keys}")
    else:
        raise TypeError(f"unsupported source type {type(source).__name__}: pass images (N, H, W, 3), an image "
                        "folder, a dict of numpy arrays or a tf.data.Dataset (e.g. from tfds.load)")
    if "image" in keys:
        return "images"
    if "image_a" in keys and "image_b" in keys:
        return "pairs"
    what = "source dict" if isinstance(source, dict) else "dataset features"
    raise KeyError(f"{what} must hold {_needs(('images', 'pairs'))}; got keys {sorted(keys)}")


def _validated(kind: str, source: dict) -> dict:
    """The set's keys of a dict source as numpy arrays, after checking image shapes and lengths."""
    data = {k: np.asarray(source[k]) for k in (IMAGE_SET_KEYS if kind == "images" else PAIR_SET_KEYS) if k in source}
    for key in ("image",) if kind == "images" else ("image_a", "image_b"):
        if data[key].ndim != 4 or data[key].shape[-1] != 3:
            raise ValueError(f"source '{key}' must be (N, H, W, 3); got {data[key].shape}")
    lengths = {k: len(v) for k, v in data.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"source arrays must all have N rows; got {lengths}")
    return data


def process_slice(n, process_index, process_count):
    """The contiguous [lo, hi) of n examples read by one process: disjoint, covering, sizes differ by at most 1."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index must be in [0, {process_count}); got {process_index}")
    return n * process_index // process_count, n * (process_index + 1) // process_count


# ----------------------------------------------------------------------------------------------------------------
# Reading folders and datasets (TensorFlow decodes and resizes).


def load_image_folder(path, size):
    """All images (*.png, *.jpg, *.jpeg, *.bmp) under `path` (sorted), decoded as RGB and resized to size x size.

    Corner-aligned bilinear resize (SPEC §1). Returns uint8 (N, size, size, 3).
    """
    folder = pathlib.Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist or is not a directory")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise FileNotFoundError(f"no images (*.png, *.jpg, *.jpeg, *.bmp) found under {folder}")
    return np.stack([decode_and_resize(open(f, "rb").read(), size, name=os.fspath(f)) for f in files])


def decode_and_resize(data, size, name="image"):
    """Encoded image bytes (PNG/JPEG/BMP/GIF) or an array (H, W, C) -> uint8 (size, size, 3), corner-aligned resize."""
    tf = tf_setup.tensorflow()
    try:
        image = tf.io.decode_image(data, channels=3, expand_animations=False) if isinstance(data, bytes) else data
    except tf.errors.InvalidArgumentError as err:
        raise ValueError(f"{name}: could not decode as an image ({err.message})") from None
    return resize_image(np.asarray(image), size)


def resize_image(image, size):
    """uint8/float (H, W, C) -> uint8 (size, size, C): corner-aligned bilinear (SPEC §1); grey images become RGB."""
    tf = tf_setup.tensorflow()
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    if image.shape[-1] == 4:
        image = image[..., :3]
    resized = tf.raw_ops.ResizeBilinear(images=tf.cast(image[None], tf.float32), size=[size, size],
                                        align_corners=True, half_pixel_centers=False)[0]
    return np.clip(np.rint(resized.numpy()), 0, 255).astype(np.uint8)


def _resize_mask(mask, size):
    tf = tf_setup.tensorflow()
    mask = np.asarray(mask)
    if mask.ndim == 3:
        mask = mask[..., 0]
    binary = (mask > (127 if mask.max() > 1 else 0)).astype(np.float32)
    resized = tf.raw_ops.ResizeBilinear(images=binary[None, ..., None], size=[size, size], align_corners=True,
                                        half_pixel_centers=False)[0, ..., 0]
    return (resized.numpy() >= 0.5).astype(np.uint8)


def _rescale_keypoints(points, height, width, size):
    """1-indexed pixels of an (height, width) image -> the same points on a size x size resize (padding kept -1)."""
    points = np.asarray(points, np.float32).reshape(-1, 2)
    valid = np.all(points >= 0, axis=-1)
    normalised = np.asarray(geometry.pixels_to_normalized(points, height, width))
    scaled = np.asarray(geometry.normalized_to_pixels(normalised, size, size))
    return np.where(valid[:, None], scaled, -1.0).astype(np.float32), valid


def _pad_points(list_of_points, list_of_valid):
    k = max([len(p) for p in list_of_points] + [1])
    points = np.full((len(list_of_points), k, 2), -1.0, np.float32)
    valid = np.zeros((len(list_of_points), k), bool)
    for i, (p, v) in enumerate(zip(list_of_points, list_of_valid)):
        points[i, :len(p)] = p
        valid[i, :len(v)] = v
    return points, valid


def _image_of(value, size, name):
    value = value.numpy() if hasattr(value, "numpy") else value
    if isinstance(value, (bytes, np.bytes_)):
        return decode_and_resize(bytes(value), size, name)
    return resize_image(value, size)


def _image_of_mask(value):
    value = value.numpy() if hasattr(value, "numpy") else value
    if isinstance(value, (bytes, np.bytes_)):
        tf = tf_setup.tensorflow()
        return tf.io.decode_image(bytes(value), channels=1, expand_animations=False).numpy()
    return np.asarray(value)


def _original_size(raw):
    value = raw.numpy() if hasattr(raw, "numpy") else raw
    if isinstance(value, (bytes, np.bytes_)):
        tf = tf_setup.tensorflow()
        shape = tf.io.decode_image(bytes(value), channels=3, expand_animations=False).shape
        return int(shape[0]), int(shape[1])
    return int(value.shape[0]), int(value.shape[1])


def materialize_images(dataset, size):
    """A tf.data/tfds dataset of image examples ('image'[, 'mask', 'category', 'keypoints']) -> numpy image set.

    Images may be decoded uint8 (H, W, 3) or encoded bytes (tfds.decode.SkipDecoding()). Every image is resized to
    size x size (keypoints and masks follow). Returns 'image' (N, S, S, 3) uint8, and 'mask', 'category',
    'keypoints'/'visible' when present.
    """
    out = {"image": [], "mask": [], "category": [], "keypoints": [], "visible": []}
    for i, example in enumerate(dataset):
        if "image" not in example:
            raise KeyError(f"image dataset example {i} has no 'image' feature; features: {sorted(example)}")
        raw = example["image"]
        image = _image_of(raw, size, f"example {i} 'image'")
        out["image"].append(image)
        if "mask" in example:
            out["mask"].append(_resize_mask(_image_of_mask(example["mask"]), size))
        if "category" in example:
            out["category"].append(int(np.asarray(example["category"])))
        if "keypoints" in example:
            h, w = _original_size(raw)
            points, valid = _rescale_keypoints(np.asarray(example["keypoints"]), h, w, size)
            out["keypoints"].append(points)
            out["visible"].append(valid)
    if not out["image"]:
        raise ValueError("image dataset is empty")
    result = {"image": np.stack(out["image"])}
    if out["mask"]:
        result["mask"] = np.stack(out["mask"])
    if out["category"]:
        result["category"] = np.asarray(out["category"], np.int32)
    if out["keypoints"]:
        result["keypoints"], result["visible"] = _pad_points(out["keypoints"], out["visible"])
    return result


def materialize_pairs(dataset, size):
    """A tf.data/tfds dataset of pair examples -> numpy pair set at size x size.

    Features: 'image_a', 'image_b' (decoded or bytes), optional 'keypoints_a', 'keypoints_b' ((K, 2) 1-indexed
    pixels, -1 padding), 'category', 'flip' (1: both images mirrored horizontally, PF-PASCAL train). Returns
    'image_a', 'image_b' (N, S, S, 3) uint8, 'category' (N,), 'flip' (N,), and 'keypoints_*'/'visible_*'.
    """
    out = {k: [] for k in PAIR_SET_KEYS}
    for i, example in enumerate(dataset):
        missing = [k for k in ("image_a", "image_b") if k not in example]
        if missing:
            raise KeyError(f"pair dataset example {i} lacks {missing}; features: {sorted(example)}")
        for side in ("a", "b"):
            raw = example["image_" + side]
            out["image_" + side].append(_image_of(raw, size, f"pair {i} 'image_{side}'"))
            if "keypoints_" + side in example:
                h, w = _original_size(raw)
                points, valid = _rescale_keypoints(np.asarray(example["keypoints_" + side]), h, w, size)
                out["keypoints_" + side].append(points)
                out["visible_" + side].append(valid)
        out["category"].append(int(np.asarray(example.get("category", 0))))
        out["flip"].append(int(np.asarray(example.get("flip", 0))))
    if not out["image_a"]:
        raise ValueError("pair dataset is empty")
    result = {k: np.stack(out[k]) for k in ("image_a", "image_b")}
    result["category"] = np.asarray(out["category"], np.int32)
    result["flip"] = np.asarray(out["flip"], np.int32)
    if out["keypoints_a"]:
        both, valid = _pad_points(out["keypoints_a"] + out["keypoints_b"], out["visible_a"] + out["visible_b"])
        n = len(out["keypoints_a"])
        result["keypoints_a"], result["keypoints_b"] = both[:n], both[n:]
        result["visible_a"], result["visible_b"] = valid[:n], valid[n:]
    return result
