"""tf.data input pipeline: pairs and triplets for weak/joint training, resumable and split per process.

What it does: from an in-memory image set (e.g. `make_synthetic_objects`), a tfds/tf.data dataset of images
('image', 'mask', 'category') or of pairs ('image_a', 'image_b', 'keypoints_a', 'keypoints_b', 'category',
'flip'), it yields per-process batches of numpy dicts: 'image_a', 'image_b'[, 'image_c'] uint8 (B, S, S, 3) and,
where the source has them, 'mask_*' uint8 0/1 (B, S, S), 'keypoints_*' float32 (B, K, 2) xy 1-indexed pixels
(-1 where not visible), 'visible_*' bool (B, K), 'category_*' int32 (B,), 'index_*' int64 (B,) (the example's
row in the source, for tracing).

Why it is built this way:
- Resumability: tf.data iterators cannot be checkpointed cheaply, so the stream is a pure function of
  (seed, position, process). Anchors A come from per-epoch permutations (stateless shuffles keyed by the epoch);
  partners, crops and flips come from stateless RNG keyed by the example's position. A run restarted with
  start_step = k yields exactly the batches an uninterrupted run yields from step k.
- Per-process slices: process p reads only the contiguous slice [N p / P, N (p + 1) / P) of the examples
  (disjoint, covering) and makes global_batch / P examples per step; partners are drawn within the slice.
- Augmentation (SPEC §7): a random crop keeping 50-100% of each side of each image, then a pair flip (A, B and C
  mirrored together). Crop and resize are one corner-aligned bilinear resampling (tf.image.crop_and_resize
  samples box corners at pixel centres, as align_corners=True), so keypoints map exactly.
- TensorFlow stays off GPUs and its threads are bounded: on small machines any input thread competes with XLA.
- Sources are held in memory at the output size (tfds examples are decoded and resized once when loaded): the
  datasets used for weak training (PF-PASCAL train, Internet, TSS, synthetic) are small enough, and random access
  for within-category partners is then a gather.
"""
from __future__ import annotations

import os
from typing import Iterator

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf  # noqa: E402

from macosnet_jax import geometry  # noqa: E402
from macosnet_jax.data.batches import PairBatch  # noqa: E402

_INT_MAX = np.iinfo(np.int64).max


def configure_tensorflow(num_threads: int = 1):
    """Hides GPUs from TensorFlow and bounds its op thread pools (must run before TF executes anything)."""
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TF already initialised its devices: too late, and harmless on CPU-only TF
        pass
    for setter in (tf.config.threading.set_intra_op_parallelism_threads,
                   tf.config.threading.set_inter_op_parallelism_threads):
        try:
            setter(num_threads)
        except RuntimeError:
            pass


configure_tensorflow()


def default_num_threads() -> int:
    """Input threads: half the cores, at least 1, at most 8 (XLA keeps the rest)."""
    return max(1, min(8, (os.cpu_count() or 2) // 2))


# ----------------------------------------------------------------------------------------------------------------
# Loading sources into memory.


def decode_and_resize(data, size, name="image"):
    """Encoded image bytes (PNG/JPEG/BMP/GIF) or an array (H, W, C) -> uint8 (size, size, 3), corner-aligned resize."""
    try:
        image = tf.io.decode_image(data, channels=3, expand_animations=False) if isinstance(data, bytes) else data
    except tf.errors.InvalidArgumentError as err:
        raise ValueError(f"{name}: could not decode as an image ({err.message})") from None
    return resize_image(np.asarray(image), size)


def resize_image(image, size):
    """uint8/float (H, W, C) -> uint8 (size, size, C): corner-aligned bilinear (SPEC §1); grey images become RGB."""
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


def _image_of_mask(value):
    value = value.numpy() if hasattr(value, "numpy") else value
    if isinstance(value, (bytes, np.bytes_)):
        return tf.io.decode_image(bytes(value), channels=1, expand_animations=False).numpy()
    return np.asarray(value)


def _original_size(raw):
    value = raw.numpy() if hasattr(raw, "numpy") else raw
    if isinstance(value, (bytes, np.bytes_)):
        shape = tf.io.decode_image(bytes(value), channels=3, expand_animations=False).shape
        return int(shape[0]), int(shape[1])
    return int(value.shape[0]), int(value.shape[1])


_PAIR_KEYS = ("image_a", "image_b")


def materialize_pairs(dataset, size):
    """A tf.data/tfds dataset of pair examples -> numpy pair set at size x size.

    Features: 'image_a', 'image_b' (decoded or bytes), optional 'keypoints_a', 'keypoints_b' ((K, 2) 1-indexed
    pixels, -1 padding), 'category', 'flip' (1: both images mirrored horizontally, PF-PASCAL train). Returns
    'image_a', 'image_b' (N, S, S, 3) uint8, 'category' (N,), 'flip' (N,), and 'keypoints_*'/'visible_*'.
    """
    out = {k: [] for k in ("image_a", "image_b", "keypoints_a", "keypoints_b", "visible_a", "visible_b",
                           "category", "flip")}
    for i, example in enumerate(dataset):
        missing = [k for k in _PAIR_KEYS if k not in example]
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
    result = {k: np.stack(out[k]) for k in _PAIR_KEYS}
    result["category"] = np.asarray(out["category"], np.int32)
    result["flip"] = np.asarray(out["flip"], np.int32)
    if out["keypoints_a"]:
        both, valid = _pad_points(out["keypoints_a"] + out["keypoints_b"], out["visible_a"] + out["visible_b"])
        n = len(out["keypoints_a"])
        result["keypoints_a"], result["keypoints_b"] = both[:n], both[n:]
        result["visible_a"], result["visible_b"] = valid[:n], valid[n:]
    return result


def as_in_memory(source, image_size):
    """Any supported source -> ('images' | 'pairs', numpy dict). Dicts are used as they are (validated)."""
    if isinstance(source, dict):
        if "image" in source:
            kind = "images"
        elif "image_a" in source and "image_b" in source:
            kind = "pairs"
        else:
            raise KeyError("source dict must hold 'image' (+ 'category') or 'image_a'/'image_b'; "
                           f"got keys {sorted(source)}")
        return kind, {k: np.asarray(v) for k, v in source.items()}
    if isinstance(source, tf.data.Dataset):
        spec = source.element_spec
        if not isinstance(spec, dict):
            raise TypeError(f"dataset elements must be dicts of features; got {spec}")
        if "image_a" in spec:
            return "pairs", materialize_pairs(source, image_size)
        if "image" in spec:
            return "images", materialize_images(source, image_size)
        raise KeyError(f"dataset features must include 'image' or 'image_a'/'image_b'; got {sorted(spec)}")
    raise TypeError(f"unsupported source type {type(source).__name__}: pass a dict of numpy arrays or a "
                    "tf.data.Dataset (e.g. from tfds.load)")


# ----------------------------------------------------------------------------------------------------------------
# Stateless sampling helpers (graph mode, inside tf.data).


def _seed(seed, process_index, stream, position):
    """A stateless-RNG seed (2,) int64 unique to (seed, process, stream, position) (fold-ins, no collisions)."""
    base = tf.constant([seed, process_index], tf.int64)
    folded = tf.random.experimental.stateless_fold_in(base, tf.constant(stream, tf.int64))
    return tf.random.experimental.stateless_fold_in(folded, tf.cast(position, tf.int64))


def _other_in_group(seed, rank, count, exclude_rank=None):
    """A uniform rank in [0, count) different from `rank` (and from exclude_rank when count >= 3)."""
    if exclude_rank is None:
        r = tf.random.stateless_uniform([], seed, 0, tf.maximum(count - 1, 1), dtype=tf.int64)
        return tf.where(r >= rank, r + 1, r) % count
    lo, hi = tf.minimum(rank, exclude_rank), tf.maximum(rank, exclude_rank)
    r = tf.random.stateless_uniform([], seed, 0, tf.maximum(count - 2, 1), dtype=tf.int64)
    r = tf.where(r >= lo, r + 1, r)
    r = tf.where(r >= hi, r + 1, r)
    return tf.where(count >= 3, r % count, _other_in_group(seed, rank, count))


def _crop_box(seed, augment):
    """[y1, x1, y2, x2] in [0, 1]: each side keeps U(0.5, 1) of the image (SPEC §7), or the whole image."""
    if not augment:
        return tf.constant([0.0, 0.0, 1.0, 1.0])
    u = tf.random.stateless_uniform([4], seed)
    h, w = 0.5 + 0.5 * u[0], 0.5 + 0.5 * u[1]
    y1, x1 = (1.0 - h) * u[2], (1.0 - w) * u[3]
    return tf.stack([y1, x1, y1 + h, x1 + w])


def _crop_resize(image, box, size, method="bilinear"):
    """Corner-aligned crop+resize of (H, W, C) to (size, size, C) float32."""
    return tf.image.crop_and_resize(tf.cast(image[None], tf.float32), box[None], [0], [size, size],
                                    method=method)[0]


def _transform_keypoints(points, valid, box, height, width, size, flip):
    """1-indexed keypoints through crop box (on an H x W image), resize to size, optional mirror; -1 if outside."""
    y1, x1, y2, x2 = box[0], box[1], box[2], box[3]
    x0 = (points[:, 0] - 1.0 - x1 * (width - 1.0)) * (size - 1.0) / ((x2 - x1) * (width - 1.0))
    y0 = (points[:, 1] - 1.0 - y1 * (height - 1.0)) * (size - 1.0) / ((y2 - y1) * (height - 1.0))
    x0 = tf.where(flip, size - 1.0 - x0, x0)
    eps = 1e-3  # points on the border pixel centre stay visible despite float rounding
    inside = (x0 >= -eps) & (x0 <= size - 1.0 + eps) & (y0 >= -eps) & (y0 <= size - 1.0 + eps)
    visible = valid & inside
    out = tf.stack([x0, y0], axis=-1) + 1.0
    return tf.where(visible[:, None], out, -1.0), visible


# ----------------------------------------------------------------------------------------------------------------
# The pipeline.


def process_slice(n, process_index, process_count):
    """The contiguous [lo, hi) of n examples read by one process: disjoint, covering, sizes differ by at most 1."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index must be in [0, {process_count}); got {process_index}")
    return n * process_index // process_count, n * (process_index + 1) // process_count


def _anchor_stream(seed, process_index, n, start_position):
    """Dataset of (position, anchor) for positions >= start_position: per-epoch stateless permutations of n."""
    start_epoch, offset = divmod(start_position, n)

    def epoch(e):
        keys = tf.random.stateless_uniform([n], _seed(seed, process_index, 3, e))
        return tf.data.Dataset.from_tensor_slices(tf.argsort(keys, stable=True))

    anchors = tf.data.Dataset.range(start_epoch, _INT_MAX).flat_map(epoch).skip(offset)
    return tf.data.Dataset.zip(tf.data.Dataset.range(start_position, _INT_MAX), anchors)


def _category_groups(categories):
    """Sorted order of local rows by category, and per row its group start, group size and rank in the group."""
    order = np.argsort(categories, kind="stable")
    sorted_cat = categories[order]
    starts = np.searchsorted(sorted_cat, sorted_cat, side="left")
    ends = np.searchsorted(sorted_cat, sorted_cat, side="right")
    rank = np.empty(len(categories), np.int64)
    rank[order] = np.arange(len(categories)) - starts
    start = np.empty(len(categories), np.int64)
    count = np.empty(len(categories), np.int64)
    start[order], count[order] = starts, ends - starts
    return order.astype(np.int64), start, count, rank


def make_pair_iterator(source, *, batch_size, image_size, seed, start_step=0, process_index=0, process_count=1,
                       triplets=False, augment=True, num_threads=None, prefetch=2) -> Iterator[PairBatch]:
    """An endless iterator of per-process batches of pairs (or triplets), resumable by step.

    source: an image set (dict with 'image' (N, H, W, 3) uint8 and 'category' (N,), optional 'mask', 'keypoints'
      (N, K, 2) 1-indexed, 'visible'), a pair set (dict with 'image_a', 'image_b', optional 'keypoints_*',
      'category', 'flip'), or a tf.data/tfds dataset of either (decoded or SkipDecoding bytes).
    batch_size: per-process batch (global_batch / process_count). image_size: output side S.
    Image sets: A runs over this process's slice in per-epoch permutations; B (and C) are other images of A's
    category in the slice. Pair sets: A, B run over the slice's pairs (each mirrored if its 'flip' is 1); C is the
    image B of another pair of the same category. augment: random crop (50-100% per side) per image + pair flip.
    Batch k is a pure function of (seed, start_step + k, process_index, process_count, the source).
    Yields `batches.PairBatch`es (`batches.TripletBatch`es with triplets).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    kind, data = as_in_memory(source, image_size)
    n_total = len(data["image"] if kind == "images" else data["image_a"])
    lo, hi = process_slice(n_total, process_index, process_count)
    local = {k: v[lo:hi] for k, v in data.items()}
    n = hi - lo
    if n < 1:
        raise ValueError(f"process {process_index}/{process_count} gets no examples from a source of {n_total}")
    categories = np.asarray(local.get("category", np.zeros(n, np.int32)), np.int64)
    order, group_start, group_count, group_rank = _category_groups(categories)
    # Partners come from the same category: B != A for image sets; C != A (and != B where possible).
    need = (2 if kind == "images" else 1) + int(triplets)
    small = sorted({int(c) for c, k in zip(categories, group_count) if k < need})
    if small:
        raise ValueError(f"categories {small} have fewer than {need} examples in process {process_index}'s slice "
                         f"[{lo}, {hi}) of the source: {'triplets' if triplets else 'pairs'} need {need} per category")
    if kind == "images" and "category" not in local:
        raise KeyError("an image set needs 'category' (N,) to draw pairs within a category")

    tensors = {k: tf.convert_to_tensor(v) for k, v in local.items()}
    lookup = {k: tf.constant(v) for k, v in (("order", order), ("start", group_start), ("count", group_count),
                                              ("rank", group_rank))}

    def partner(position, row, stream, exclude=None):
        rank = tf.gather(lookup["rank"], row)
        count = tf.gather(lookup["count"], row)
        seed_ = _seed(seed, process_index, stream, position)
        ex_rank = None if exclude is None else tf.gather(lookup["rank"], exclude)
        other = _other_in_group(seed_, rank, count, ex_rank)
        return tf.gather(lookup["order"], tf.gather(lookup["start"], row) + other)

    def view(image_key, row, suffix, position, stream, flip):
        """One image of the example: crop, resize, flip; its mask/keypoints/category alongside."""
        image = tf.gather(tensors[image_key], row)
        height, width = tf.cast(tf.shape(image)[0], tf.float32), tf.cast(tf.shape(image)[1], tf.float32)
        box = _crop_box(_seed(seed, process_index, stream, position), augment)
        out = {"image_" + suffix: _crop_resize(image, box, image_size)}
        mask_key = "mask" if kind == "images" else None
        if mask_key in tensors:
            out["mask_" + suffix] = _crop_resize(tf.gather(tensors[mask_key], row)[..., None], box, image_size)[..., 0]
        kp_key = "keypoints" if kind == "images" else "keypoints_" + image_key[-1]
        vis_key = "visible" if kind == "images" else "visible_" + image_key[-1]
        if kp_key in tensors:
            points = tf.cast(tf.gather(tensors[kp_key], row), tf.float32)
            valid = tf.gather(tensors[vis_key], row) if vis_key in tensors else tf.reduce_all(points >= 0, -1)
            out["keypoints_" + suffix], out["visible_" + suffix] = _transform_keypoints(
                points, tf.cast(valid, tf.bool), box, height, width, image_size, flip)
        for name, value in list(out.items()):
            if name.startswith(("image_", "mask_")):
                value = tf.where(flip, tf.reverse(value, axis=[1]), value)
                if name.startswith("image_"):
                    out[name] = tf.cast(tf.clip_by_value(tf.round(value), 0, 255), tf.uint8)
                else:
                    out[name] = tf.cast(value >= 0.5, tf.uint8)
        out["category_" + suffix] = tf.cast(tf.gather(lookup_category, row), tf.int32)
        out["index_" + suffix] = tf.cast(row, tf.int64) + lo
        return out

    lookup_category = tf.constant(categories)

    def example(position, anchor):
        flip = tf.random.stateless_uniform([], _seed(seed, process_index, 0, position)) < 0.5 if augment \
            else tf.constant(False)
        out = {}
        if kind == "images":
            b = partner(position, anchor, 1)
            out.update(view("image", anchor, "a", position, 10, flip))
            out.update(view("image", b, "b", position, 11, flip))
            if triplets:
                c = partner(position, anchor, 2, exclude=b)
                out.update(view("image", c, "c", position, 12, flip))
        else:
            if "flip" in tensors:  # the dataset's own mirroring (PF-PASCAL train lists each pair twice)
                flip = tf.math.logical_xor(flip, tf.gather(tensors["flip"], anchor) > 0)
            out.update(view("image_a", anchor, "a", position, 10, flip))
            out.update(view("image_b", anchor, "b", position, 11, flip))
            if triplets:
                other = partner(position, anchor, 2)
                out.update(view("image_b", other, "c", position, 12, flip))
        return out

    threads = num_threads or default_num_threads()
    options = tf.data.Options()
    options.threading.private_threadpool_size = threads
    options.threading.max_intra_op_parallelism = 1
    options.autotune.cpu_budget = threads
    options.deterministic = True
    ds = _anchor_stream(seed, process_index, n, start_step * batch_size)
    ds = ds.map(example, num_parallel_calls=threads, deterministic=True)
    ds = ds.batch(batch_size, drop_remainder=True).prefetch(prefetch).with_options(options)
    return ds.as_numpy_iterator()
