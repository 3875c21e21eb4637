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
- TensorFlow stays off GPUs and its threads are bounded (`tf_setup`): on small machines any input thread competes
  with XLA.
- Sources are held in memory at the output size (`sources.as_in_memory`), so within-category partners are a gather.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from macosnet_jax.data import sources, tf_setup
from macosnet_jax.data.batches import PairBatch
# Their home is sources / tf_setup; importable from here as well.
from macosnet_jax.data.sources import (  # noqa: F401
    as_in_memory, decode_and_resize, materialize_images, materialize_pairs, process_slice, resize_image)
from macosnet_jax.data.tf_setup import configure_tensorflow, default_num_threads  # noqa: F401

tf = tf_setup.tensorflow()

_INT_MAX = np.iinfo(np.int64).max


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
    kind, data = sources.as_in_memory(source, image_size)
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
