"""Tests of the one source loader (macosnet_jax.data.sources): what config.data names and what the pair pipeline,
the synthetic warps and the stages are given, as in-memory arrays. References: data.synthetic called directly,
a numpy corner-aligned bilinear resize, and the tfds examples of the Internet builder's dummy data."""
import pathlib
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from macosnet_jax import stages
from macosnet_jax.data import pipeline, sources, synthetic, warps

REPO = pathlib.Path(__file__).resolve().parents[1]
SIZE = 24


def _config(**fields):
    return ml_collections.ConfigDict(fields)


def numpy_resize(image, size):
    """Corner-aligned bilinear resize (SPEC §1) of (H, W, C) in float64: output i samples i (H - 1) / (S - 1)."""
    image = np.asarray(image, np.float64)
    h, w = image.shape[:2]
    ys, xs = np.arange(size) * (h - 1) / (size - 1), np.arange(size) * (w - 1) / (size - 1)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    wy, wx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    return ((1 - wy) * (1 - wx) * image[y0][:, x0] + (1 - wy) * wx * image[y0][:, x1]
            + wy * (1 - wx) * image[y1][:, x0] + wy * wx * image[y1][:, x1])


def test_synthetic_source_is_data_synthetic_called_directly():
    config = _config(name="synthetic_objects", num_images=6, seed=5, num_categories=3, background="backdrop")
    loaded = sources.from_config(config, SIZE)
    direct = synthetic.make_synthetic_objects(6, SIZE, 5, 3, "backdrop")
    assert set(loaded) == set(direct)
    for key in direct:
        assert loaded[key].dtype == direct[key].dtype, key
        np.testing.assert_array_equal(loaded[key], direct[key], err_msg=key)
    assert sources.from_config(config, SIZE) is loaded  # cached: both warp streams of the strong stage share it
    default = sources.from_config(_config(name="synthetic_objects", num_images=6, seed=5, num_categories=3), SIZE)
    np.testing.assert_array_equal(default["image"], synthetic.make_synthetic_objects(6, SIZE, 5, 3)["image"])


def test_every_caller_uses_the_one_loader():
    assert stages.image_source is sources.from_config
    assert pipeline.as_in_memory is sources.as_in_memory
    assert warps.load_image_folder is sources.load_image_folder
    assert pipeline.process_slice is sources.process_slice is warps.process_slice
    assert pipeline.materialize_images is sources.materialize_images


def test_unknown_source_names_the_key_and_the_accepted_names():
    with pytest.raises(ValueError, match="config.data.name='bogus'") as info:
        sources.from_config(_config(name="bogus"), SIZE)
    assert all(name in str(info.value) for name in sources.SOURCE_NAMES)


def test_dict_and_array_sources_keep_arrays_dtypes_and_order():
    objects = synthetic.make_synthetic_objects(4, SIZE, 1, 2)
    kind, data = sources.as_in_memory(objects, SIZE)
    assert kind == "images" and set(data) == set(sources.IMAGE_SET_KEYS)  # 'index' is not part of an image set
    assert all(data[k] is objects[k] for k in data)  # no copy, no cast
    kind, data = sources.as_in_memory(objects["image"], SIZE)
    assert kind == "images" and data["image"] is objects["image"]
    pairs = {"image_a": objects["image"][:2], "image_b": objects["image"][2:], "category": np.zeros(2, np.int32),
             "name": ["x", "y"]}
    kind, data = sources.as_in_memory(pairs, SIZE)
    assert kind == "pairs" and sorted(data) == ["category", "image_a", "image_b"]


def test_source_errors_name_the_problem():
    images = np.zeros((2, 8, 8, 3), np.uint8)
    with pytest.raises(KeyError, match="'image'"):
        sources.as_in_memory({"pictures": images}, 8)
    with pytest.raises(KeyError, match="'image'"):  # the warps need an image set, not a pair set
        sources.image_set({"image_a": images, "image_b": images}, 8)
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        sources.as_in_memory(images[..., 0], 8)
    with pytest.raises(ValueError, match="N rows"):
        sources.as_in_memory({"image": images, "category": np.zeros(3, np.int32)}, 8)
    with pytest.raises(TypeError, match="unsupported source"):
        sources.as_in_memory([1, 2, 3], 8)
    with pytest.raises(ValueError, match="process_index"):
        sources.process_slice(4, 2, 2)


def test_image_folder_source_matches_a_numpy_resize(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(4)
    images = [rng.integers(0, 256, (17 + 6 * i, 29, 3), dtype=np.uint8) for i in range(3)]
    grey = rng.integers(0, 256, (20, 20), dtype=np.uint8)
    for i, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / f"{i}.png")
    Image.fromarray(grey).save(tmp_path / "3.bmp")
    (tmp_path / "readme.txt").write_text("not an image")
    loaded = sources.from_config(_config(name="image_folder", path=str(tmp_path)), SIZE)
    assert set(loaded) == {"image"} and loaded["image"].shape == (4, SIZE, SIZE, 3)
    assert loaded["image"].dtype == np.uint8
    for image, out in zip(images + [np.repeat(grey[..., None], 3, -1)], loaded["image"]):  # sorted by name
        np.testing.assert_allclose(out, numpy_resize(image, SIZE), atol=1.0)  # one grey level of rounding
    np.testing.assert_array_equal(sources.image_set(str(tmp_path), SIZE)["image"], loaded["image"])


def test_pair_dataset_is_decoded_resized_and_keypoints_rescaled():
    import tensorflow as tf

    rng = np.random.default_rng(5)
    shapes = [(30, 40), (50, 20)]
    images = [rng.integers(0, 256, shape + (3,), dtype=np.uint8) for shape in shapes]
    points = [np.array([[1, 1], [w, h], [(w + 1) / 2, 3], [-1, -1]], np.float32) for h, w in shapes]

    def gen():
        for i in range(2):
            yield {"image_a": tf.io.encode_png(images[i]).numpy(), "image_b": images[1 - i],
                   "keypoints_a": points[i], "keypoints_b": points[1 - i], "category": 7, "flip": i}

    spec = {"image_a": tf.TensorSpec([], tf.string), "image_b": tf.TensorSpec([None, None, 3], tf.uint8),
            "keypoints_a": tf.TensorSpec([4, 2], tf.float32), "keypoints_b": tf.TensorSpec([4, 2], tf.float32),
            "category": tf.TensorSpec([], tf.int64), "flip": tf.TensorSpec([], tf.int64)}
    kind, data = sources.as_in_memory(tf.data.Dataset.from_generator(gen, output_signature=spec), SIZE)
    assert kind == "pairs" and data["image_a"].shape == (2, SIZE, SIZE, 3) and data["image_a"].dtype == np.uint8
    np.testing.assert_array_equal(data["category"], [7, 7])
    np.testing.assert_array_equal(data["flip"], [0, 1])
    for i in range(2):
        for side, j in (("a", i), ("b", 1 - i)):
            np.testing.assert_allclose(data["image_" + side][i], numpy_resize(images[j], SIZE), atol=1.0)
            h, w = shapes[j]
            expected = 1 + (points[j][:3] - 1) * (SIZE - 1) / np.array([w - 1, h - 1])  # 1-indexed, corner-aligned
            np.testing.assert_allclose(data["keypoints_" + side][i, :3], expected, atol=1e-4)
            assert np.all(data["keypoints_" + side][i, 3] == -1)
            np.testing.assert_array_equal(data["visible_" + side][i], [True, True, True, False])


@pytest.fixture(scope="module")
def internet_dir(tmp_path_factory):
    """A tfds data dir with the Internet builder prepared from its dummy data."""
    from macosnet_datasets import build
    out = str(tmp_path_factory.mktemp("tfds"))
    build.build("internet", str(REPO / "datasets" / "internet" / "dummy_data"), out)
    return out


def test_tfds_source_is_the_builders_examples_resized(internet_dir):
    import tensorflow_datasets as tfds

    config = _config(name="tfds", tfds_name="internet", split="full", data_dir=internet_dir)
    loaded = sources.from_config(config, SIZE)
    examples = list(tfds.as_numpy(tfds.load("internet", split="full", data_dir=internet_dir)))
    assert sorted(loaded) == ["category", "image", "mask"] and len(loaded["image"]) == len(examples) > 1
    assert loaded["image"].dtype == np.uint8 and loaded["mask"].dtype == np.uint8
    assert loaded["category"].dtype == np.int32
    for i, example in enumerate(examples):  # tfds order kept
        np.testing.assert_allclose(loaded["image"][i], numpy_resize(example["image"], SIZE), atol=1.0)
        assert loaded["category"][i] == example["category"]
        binary = (example["mask"] > (127 if example["mask"].max() > 1 else 0)).astype(np.float64)
        reference = numpy_resize(binary[..., None], SIZE)[..., 0]
        clear = np.abs(reference - 0.5) > 1e-3  # pixels exactly on the threshold may round either way
        np.testing.assert_array_equal(loaded["mask"][i][clear], (reference[clear] >= 0.5).astype(np.uint8))
    assert set(np.unique(loaded["mask"])) <= {0, 1}


def test_importing_the_loader_does_not_import_tensorflow():
    code = ("import sys, numpy as np; from macosnet_jax.data import sources, warps; "
            "sources.as_in_memory({'image': np.zeros((2, 4, 4, 3), np.uint8)}, 4); "
            "print('tensorflow' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False", result.stderr
