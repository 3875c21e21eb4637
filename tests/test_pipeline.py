"""Tests of the tf.data pair/triplet pipeline (macosnet_jax.data.pipeline): shapes, determinism, resumption,
per-process slices, within-category partners, augmentation geometry, tfds-style sources, clear errors."""
import numpy as np
import pytest
import tensorflow as tf

from macosnet_jax.data import pipeline, synthetic

SIZE = 32
N = 27  # 3 categories x 3 processes x 3 images: every slice can form triplets


@pytest.fixture(scope="module")
def objects():
    return synthetic.make_synthetic_objects(N, SIZE, seed=11, num_categories=3)


def take(source, count, **kwargs):
    kwargs = {"batch_size": 4, "image_size": SIZE, "seed": 0, **kwargs}
    it = pipeline.make_pair_iterator(source, **kwargs)
    return [next(it) for _ in range(count)]


def assert_batches_equal(a, b):
    assert set(a) == set(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_triplet_batch_shapes_ranges_and_categories(objects):
    for batch in take(objects, 3, triplets=True):
        for s in "abc":
            assert batch[f"image_{s}"].shape == (4, SIZE, SIZE, 3) and batch[f"image_{s}"].dtype == np.uint8
            assert batch[f"mask_{s}"].shape == (4, SIZE, SIZE) and set(np.unique(batch[f"mask_{s}"])) <= {0, 1}
            kp, vis = batch[f"keypoints_{s}"], batch[f"visible_{s}"]
            assert kp.shape == (4, synthetic.NUM_LANDMARKS, 2) and vis.dtype == bool
            assert np.all((kp[vis] >= 1) & (kp[vis] <= SIZE)) and np.all(kp[~vis] == -1)
            np.testing.assert_array_equal(batch[f"category_{s}"], objects["category"][batch[f"index_{s}"]])
        np.testing.assert_array_equal(batch["category_a"], batch["category_b"])
        np.testing.assert_array_equal(batch["category_a"], batch["category_c"])
        assert np.all(batch["index_a"] != batch["index_b"]) and np.all(batch["index_a"] != batch["index_c"])
        assert np.all(batch["index_b"] != batch["index_c"])  # 9 images per category: C can avoid B
    pairs = take(objects, 1)[0]
    assert "image_c" not in pairs and pairs["image_b"].shape == (4, SIZE, SIZE, 3)


def test_deterministic_and_seed_dependent(objects):
    a = take(objects, 3, triplets=True, seed=7)
    b = take(objects, 3, triplets=True, seed=7, num_threads=2)  # thread count must not change the stream
    for x, y in zip(a, b):
        assert_batches_equal(x, y)
    c = take(objects, 1, triplets=True, seed=8)[0]
    assert not np.array_equal(c["image_a"], a[0]["image_a"])


def test_resumed_iterator_yields_identical_batches(objects):
    full = take(objects, 9, triplets=True, seed=3, process_index=1, process_count=2)
    resumed = take(objects, 4, triplets=True, seed=3, process_index=1, process_count=2, start_step=5)
    for x, y in zip(full[5:], resumed):
        assert_batches_equal(x, y)


def test_process_slices_disjoint_covering_and_epochs(objects):
    seen = []
    for p in range(3):
        batches = take(objects, 5, triplets=True, process_index=p, process_count=3)  # 20 anchors, 9 per slice
        lo, hi = N * p // 3, N * (p + 1) // 3
        anchors = np.concatenate([b["index_a"] for b in batches])
        assert sorted(anchors[:9]) == list(range(lo, hi))  # one epoch = a permutation of the slice
        assert sorted(anchors[9:18]) == list(range(lo, hi))
        for s in "bc":
            partners = np.concatenate([b[f"index_{s}"] for b in batches])
            assert np.all((partners >= lo) & (partners < hi))
        seen.append(set(anchors))
    assert set().union(*seen) == set(range(N))
    assert all(not (seen[i] & seen[j]) for i in range(3) for j in range(i + 1, 3))


def test_no_augmentation_is_exact_and_keypoints_follow_the_crop(objects):
    batch = take(objects, 1, augment=False)[0]
    idx = batch["index_a"]
    np.testing.assert_array_equal(batch["image_a"], objects["image"][idx])
    np.testing.assert_array_equal(batch["mask_a"], objects["mask"][idx])
    kp = np.where(objects["visible"][idx][..., None], objects["keypoints"][idx], -1)
    np.testing.assert_allclose(batch["keypoints_a"], kp, atol=1e-4)
    # With crops and flips, landmarks (>= 3 px inside the outline, only magnified) stay on the object.
    hits = []
    for b in take(objects, 6, triplets=True, seed=2):
        for s in "abc":
            for i in range(4):
                vis = b[f"visible_{s}"][i]
                cols, rows = np.rint(b[f"keypoints_{s}"][i][vis] - 1).astype(int).T
                hits.extend(b[f"mask_{s}"][i][rows, cols])
    assert np.mean(hits) > 0.98, np.mean(hits)


def test_crop_box_keeps_half_to_all_of_each_side():
    boxes = np.stack([pipeline._crop_box(tf.constant([1, i], tf.int64), True).numpy() for i in range(200)])
    h, w = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert np.all((h >= 0.5) & (h <= 1.0 + 1e-6) & (w >= 0.5) & (w <= 1.0 + 1e-6))
    assert np.all(boxes[:, :2] >= 0) and np.all(boxes[:, 2:] <= 1.0 + 1e-6)
    assert h.min() < 0.55 and h.max() > 0.95


def test_crop_then_resize_matches_numpy_bilinear():
    """An independent corner-aligned crop+resize in numpy: output pixel i samples y1 (H-1) + i (y2-y1)(H-1)/(S-1)."""
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 255, (20, 30, 3)).astype(np.float32)
    box = np.array([0.1, 0.3, 0.8, 0.9], np.float32)
    out = pipeline._crop_resize(tf.constant(image), tf.constant(box), 9).numpy()
    ys = box[0] * 19 + np.arange(9) * (box[2] - box[0]) * 19 / 8
    xs = box[1] * 29 + np.arange(9) * (box[3] - box[1]) * 29 / 8
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    wy, wx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    y1, x1 = np.minimum(y0 + 1, 19), np.minimum(x0 + 1, 29)
    ref = ((1 - wy) * (1 - wx) * image[y0][:, x0] + (1 - wy) * wx * image[y0][:, x1]
           + wy * (1 - wx) * image[y1][:, x0] + wy * wx * image[y1][:, x1])
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-3)


def _pair_set():
    rng = np.random.default_rng(1)
    n, k = 6, 3
    return {
        "image_a": rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8),
        "image_b": rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8),
        "keypoints_a": rng.uniform(1, SIZE, (n, k, 2)).astype(np.float32),
        "keypoints_b": rng.uniform(1, SIZE, (n, k, 2)).astype(np.float32),
        "category": np.array([0, 0, 1, 1, 2, 2], np.int32),
        "flip": np.array([0, 1, 0, 1, 0, 1], np.int32),
    }


def test_pair_source_flip_flag_and_triplets():
    pairs = _pair_set()
    batch = take(pairs, 1, batch_size=6, augment=False, triplets=True)[0]
    for j, i in enumerate(batch["index_a"]):
        for s in "ab":
            image, kp = pairs[f"image_{s}"][i], pairs[f"keypoints_{s}"][i].copy()
            if pairs["flip"][i]:  # mirrored pair: columns reversed, x -> S + 1 - x (1-indexed)
                image, kp[:, 0] = image[:, ::-1], SIZE + 1 - kp[:, 0]
            np.testing.assert_array_equal(batch[f"image_{s}"][j], image)
            np.testing.assert_allclose(batch[f"keypoints_{s}"][j], kp, atol=1e-4)
    np.testing.assert_array_equal(batch["index_a"], batch["index_b"])
    assert np.all(batch["index_c"] != batch["index_a"])  # C: image B of another pair of the same category
    np.testing.assert_array_equal(batch["category_c"], batch["category_a"])


def test_tfds_style_sources_are_decoded_resized_and_keypoints_rescaled():
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, (30 + 5 * i, 40, 3), dtype=np.uint8) for i in range(4)]

    def gen():
        for i, im in enumerate(images):
            h, w = im.shape[:2]
            yield {"image": tf.io.encode_png(im).numpy(), "mask": np.full((h, w, 1), 255, np.uint8),
                   "category": i % 2, "keypoints": np.array([[1, 1], [w, h], [-1, -1]], np.float32)}

    spec = {"image": tf.TensorSpec([], tf.string), "mask": tf.TensorSpec([None, None, 1], tf.uint8),
            "category": tf.TensorSpec([], tf.int64), "keypoints": tf.TensorSpec([3, 2], tf.float32)}
    data = pipeline.materialize_images(tf.data.Dataset.from_generator(gen, output_signature=spec), SIZE)
    assert data["image"].shape == (4, SIZE, SIZE, 3) and np.all(data["mask"] == 1)
    np.testing.assert_allclose(data["keypoints"][:, :2], np.tile([[1, 1], [SIZE, SIZE]], (4, 1, 1)), atol=1e-4)
    assert np.all(data["keypoints"][:, 2] == -1) and not data["visible"][:, 2].any()
    # Corner-aligned resize keeps the corner pixels exactly.
    for im, out in zip(images, data["image"]):
        for (r, c), (rr, cc) in (((0, 0), (0, 0)), ((-1, -1), (-1, -1))):
            np.testing.assert_array_equal(out[rr, cc], im[r, c])
    ds = tf.data.Dataset.from_generator(gen, output_signature=spec)
    batch = take(ds, 1, batch_size=2)[0]
    np.testing.assert_array_equal(batch["category_a"], batch["category_b"])


def test_errors_name_the_problem(objects):
    with pytest.raises(KeyError, match="'image'"):
        take({"pictures": objects["image"]}, 1)
    with pytest.raises(ValueError, match="categories"):
        few = {k: v[:4] for k, v in objects.items()}  # 4 images, 3 categories: two have a single image
        take(few, 1)
    with pytest.raises(ValueError, match="process_index"):
        take(objects, 1, process_index=2, process_count=2)
    with pytest.raises(TypeError, match="unsupported source"):
        take([1, 2, 3], 1)
