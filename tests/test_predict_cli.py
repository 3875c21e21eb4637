"""Tests of the `macosnet-predict` command (macosnet_jax.predict_cli): image reading rules, files written, errors.

The end-to-end test runs the reference's small weakalign checkpoint (tests/fixtures/reference) through the CLI on
the raw fixture images and checks theta and the transferred points against model_small.npz.
"""
import json

import numpy as np
import pytest
from PIL import Image

from conftest import load_fixture
from macosnet_jax import evaluate, predict_cli


def _random_init_args(tmp_path, *extra, model="matching"):
    return ["--random-init", "--model", model, "--depth", "18", "--width", "8", "--last-layer", "layer2", "--image-size", "64",
            "--regression-channels", "8,4", "--regression-kernels", "3,3", "--out", str(tmp_path / "out"), *extra]


def _write_pair(tmp_path):
    rng = np.random.default_rng(0)
    a = tmp_path / "a.png"
    Image.fromarray(rng.integers(0, 256, (40, 52, 3), dtype=np.uint8)).save(a)
    b = tmp_path / "b_grey16.png"  # 16-bit greyscale PNG
    Image.fromarray(rng.integers(0, 65536, (36, 30), dtype=np.uint16)).save(b)
    return a, b


# --------------------------------------------------------------------------------------------------------------
# Image reading.


def test_load_image_conversion_rules(tmp_path):
    grey16 = np.array([[0, 257, 65535], [32896, 1000, 128]], np.uint16)
    Image.fromarray(grey16).save(tmp_path / "g16.png")
    loaded = predict_cli.load_image(tmp_path / "g16.png")
    assert loaded.dtype == np.uint8 and loaded.shape == (2, 3, 3)
    np.testing.assert_array_equal(loaded[..., 0], np.round(grey16 / 257.0))
    np.testing.assert_array_equal(loaded[..., 0], loaded[..., 2])

    grey = np.array([[0, 100], [200, 255]], np.uint8)
    Image.fromarray(grey).save(tmp_path / "g8.png")
    np.testing.assert_array_equal(predict_cli.load_image(tmp_path / "g8.png"), np.repeat(grey[..., None], 3, -1))

    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = [10, 20, 30, 255]  # opaque: kept
    rgba[0, 1] = [10, 20, 30, 0]  # transparent: white
    rgba[1, 0] = [0, 0, 0, 128]  # half: composited over white
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    loaded = predict_cli.load_image(tmp_path / "rgba.png")
    np.testing.assert_array_equal(loaded[0, 0], [10, 20, 30])
    np.testing.assert_array_equal(loaded[0, 1], [255, 255, 255])
    assert abs(int(loaded[1, 0, 0]) - 127) <= 1

    Image.fromarray(np.array([[0.0, 0.5], [1.0, 0.25]], np.float32)).save(tmp_path / "f.tiff")
    np.testing.assert_array_equal(predict_cli.load_image(tmp_path / "f.tiff")[..., 1], [[0, 128], [255, 64]])


def test_bad_image_path_and_unreadable_file(tmp_path, capsys):
    with pytest.raises(predict_cli.CliError, match="not found: .*missing.png"):
        predict_cli.load_image(tmp_path / "missing.png")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"this is not a jpeg")
    with pytest.raises(predict_cli.CliError, match="cannot read image .*broken.jpg"):
        predict_cli.load_image(broken)
    a, _ = _write_pair(tmp_path)
    assert predict_cli.main([str(a), str(broken), *_random_init_args(tmp_path)]) == 2
    assert "broken.jpg" in capsys.readouterr().err
    assert predict_cli.main([str(a), str(tmp_path / "nope.png"), *_random_init_args(tmp_path)]) == 2
    assert "nope.png" in capsys.readouterr().err
    assert predict_cli.main(["--collection", str(tmp_path / "nodir"), *_random_init_args(tmp_path)]) == 2
    assert "nodir" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # fails before building the model or writing anything
    with pytest.raises(SystemExit):
        predict_cli.main([str(a), "--out", str(tmp_path)])  # neither --checkpoint nor --random-init


def test_load_points_json_and_csv(tmp_path):
    (tmp_path / "p.json").write_text(json.dumps({"points": [[1, 2], [3.5, 4]]}))
    np.testing.assert_array_equal(predict_cli.load_points(tmp_path / "p.json"), [[1, 2], [3.5, 4]])
    (tmp_path / "p.csv").write_text("x,y\n1,2\n3.5,4\n")
    np.testing.assert_array_equal(predict_cli.load_points(tmp_path / "p.csv"), [[1, 2], [3.5, 4]])
    (tmp_path / "bad.csv").write_text("1,2\nfoo,bar\n")
    with pytest.raises(predict_cli.CliError, match="bad.csv"):
        predict_cli.load_points(tmp_path / "bad.csv")


# --------------------------------------------------------------------------------------------------------------
# The command.


def test_pair_mode_random_init_writes_every_file(tmp_path):
    a, b = _write_pair(tmp_path)
    points = np.array([[1.0, 1.0], [15.5, 20.0], [30.0, 36.0]])
    (tmp_path / "points.csv").write_text("\n".join(f"{x},{y}" for x, y in points))
    status = predict_cli.main([str(a), str(b), "--points", str(tmp_path / "points.csv"),
                               *_random_init_args(tmp_path, model="macosnet")])
    assert status == 0
    out = tmp_path / "out"
    for name in ("warped_source.png", "match.png", "keypoints.png", "result.json", "mask_a.png", "mask_b.png",
                 "mask_overlay_a.png", "mask_overlay_b.png"):
        assert (out / name).is_file(), name
    assert Image.open(out / "mask_a.png").size == (52, 40) and Image.open(out / "mask_b.png").size == (30, 36)
    assert Image.open(out / "warped_source.png").size == (30, 36)  # B's (width, height)
    result = json.loads((out / "result.json").read_text())
    assert len(result["theta_aff"]) == 6 and len(result["theta_tps"]) == 18
    # The random init puts the heads at the identity transform plus a small random kernel.
    np.testing.assert_allclose(result["theta_aff"], [1, 0, 0, 0, 1, 0], atol=0.2)
    assert result["size_a"] == [40, 52] and result["size_b"] == [36, 30]
    expected = evaluate.transfer_points(points, result["theta_aff"], result["theta_tps"], (40, 52), (36, 30))
    np.testing.assert_allclose(result["points_a"], expected, atol=1e-3)
    assert result["has_masks"] is True and result["model"]["model"] == "macosnet"


class _FakeMatcher:
    """A predictor with masks (the decoder model is not needed to test what the CLI writes)."""

    def __init__(self):
        self.calls = 0

    def match(self, image_a, image_b):
        self.calls += 1
        prob = lambda im: (np.asarray(Image.fromarray(im).resize((16, 16))).mean(-1) > 127).astype(np.float32)
        return {"theta_aff": np.array([1, 0, 0, 0, 1, 0], np.float32),
                "theta_tps": np.array([-1, -1, -1, 0, 0, 0, 1, 1, 1, -1, 0, 1, -1, 0, 1, -1, 0, 1], np.float32),
                "mask_a": prob(image_a), "mask_b": prob(image_b)}


def _blob_image(path, h, w, box):
    image = np.full((h, w, 3), 30, np.uint8)
    y0, y1, x0, x1 = box
    image[y0:y1, x0:x1] = 220
    Image.fromarray(image).save(path)


def test_pair_mode_with_masks_writes_masks_and_overlays(tmp_path, monkeypatch):
    monkeypatch.setattr(predict_cli, "build_matcher", lambda args: _FakeMatcher())
    _blob_image(tmp_path / "a.png", 32, 40, (8, 24, 10, 30))
    _blob_image(tmp_path / "b.jpg", 24, 24, (4, 20, 4, 20))
    assert predict_cli.main([str(tmp_path / "a.png"), str(tmp_path / "b.jpg"), *_random_init_args(tmp_path)]) == 0
    out = tmp_path / "out"
    for name in ("mask_a.png", "mask_b.png", "mask_overlay_a.png", "mask_overlay_b.png", "match.png"):
        assert (out / name).is_file(), name
    mask_a = np.asarray(Image.open(out / "mask_a.png"))
    assert mask_a.shape == (32, 40) and set(np.unique(mask_a)) == {0, 255}
    gt = np.zeros((32, 40), bool)
    gt[8:24, 10:30] = True
    assert evaluate.precision_jaccard(mask_a > 0, gt)[1] > 0.8
    assert json.loads((out / "result.json").read_text())["has_masks"] is True


def test_collection_mode(tmp_path, monkeypatch):
    fake = _FakeMatcher()
    monkeypatch.setattr(predict_cli, "build_matcher", lambda args: fake)
    folder = tmp_path / "horses"
    folder.mkdir()
    for k in range(4):
        _blob_image(folder / f"im{k}.png", 20 + 2 * k, 24, (5, 15, 4 + k, 18))
    (folder / "notes.txt").write_text("not an image")
    assert predict_cli.main(["--collection", str(folder), "--partners", "1", *_random_init_args(tmp_path)]) == 0
    out = tmp_path / "out"
    assert fake.calls == 4  # cyclic pairs {i, i+1} of 4 images
    assert (out / "contact_sheet.png").is_file()
    for k in range(4):
        mask = np.asarray(Image.open(out / "masks" / f"im{k}.png"))
        assert mask.shape == (20 + 2 * k, 24)
        assert (out / "overlays" / f"im{k}.png").is_file()
    summary = json.loads((out / "collection.json").read_text())
    assert [m["image"] for m in summary["images"]] == [f"im{k}.png" for k in range(4)]


def test_collection_mode_needs_masks(tmp_path, capsys, monkeypatch):
    class NoMasks(_FakeMatcher):
        def match(self, image_a, image_b):
            return dict(super().match(image_a, image_b), mask_a=None, mask_b=None)

    monkeypatch.setattr(predict_cli, "build_matcher", lambda args: NoMasks())
    folder = tmp_path / "c"
    folder.mkdir()
    for k in range(2):
        _blob_image(folder / f"{k}.png", 16, 16, (2, 10, 2, 10))
    assert predict_cli.main(["--collection", str(folder), *_random_init_args(tmp_path)]) == 2
    assert "no co-segmentation decoder" in capsys.readouterr().err


def test_reference_checkpoint_end_to_end(tmp_path, fixtures_dir):
    """The small weakalign checkpoint through the CLI reproduces the reference's theta and transferred points."""
    ref = load_fixture("model_small")
    Image.fromarray(ref["raw_source_image_0"]).save(tmp_path / "a.png")
    Image.fromarray(ref["raw_target_image_0"]).save(tmp_path / "b.png")
    points_b = ref["target_points"][0].T  # (2, P) -> (P, 2)
    (tmp_path / "pts.json").write_text(json.dumps(points_b.tolist()))
    status = predict_cli.main([str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--points", str(tmp_path / "pts.json"),
                               "--checkpoint", str(fixtures_dir / "model_small_weakalign_legacy.pth.tar"),
                               "--layout", "weakalign", "--image-size", "60", "--out", str(tmp_path / "out")])
    assert status == 0
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["has_masks"] is False  # a matching-only checkpoint: no mask files
    assert not (tmp_path / "out" / "mask_a.png").exists()
    np.testing.assert_allclose(result["theta_aff"], ref["theta_aff"][0], atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(result["theta_tps"], ref["theta_tps"][0], atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(result["points_a"], ref["warped_points"][0].T, atol=1e-2)


def test_random_variables_match_model_shapes():
    import jax

    from macosnet_jax.models import matching

    model = matching.MatchingModel(depth=18, last_layer="layer2", width=4, image_size=32, regression_channels=(8, 4),
                                   regression_kernels=(3, 2))
    variables = predict_cli.random_variables(model, seed=3, image_size=32)
    shapes = jax.eval_shape(lambda: matching.init_matching_model(model, jax.random.PRNGKey(0)))
    assert jax.tree_util.tree_structure(variables) == jax.tree_util.tree_structure(shapes)
    for got, want in zip(jax.tree_util.tree_leaves(variables), jax.tree_util.tree_leaves(shapes)):
        assert got.shape == want.shape and got.dtype == want.dtype
    leaves = jax.tree_util.tree_leaves(predict_cli.random_variables(model, seed=3, image_size=32))
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(variables), leaves))  # deterministic
    affine_bias = variables["params"]["affine_regression"]["linear"]["bias"]
    np.testing.assert_array_equal(affine_bias, [1, 0, 0, 0, 1, 0])


def test_weights_that_do_not_fit_are_one_line_naming_tensors_and_the_image_size(tmp_path, fixtures_dir, capsys):
    a, b = _write_pair(tmp_path)
    status = predict_cli.main([str(a), str(b), "--checkpoint",
                               str(fixtures_dir / "model_small_weakalign_legacy.pth.tar"), "--image-size", "240",
                               "--out", str(tmp_path / "out")])
    assert status == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "FeatureRegression.conv.0.weight" in err
    assert "fit --image-size 60, not 240" in err and not (tmp_path / "out").exists()
    with pytest.raises(predict_cli.CliError, match="do not fit the model"):  # --verbose: raised, with traceback
        predict_cli.main([str(a), str(b), "--checkpoint", str(fixtures_dir / "model_small_weakalign_legacy.pth.tar"),
                          "--image-size", "240", "--out", str(tmp_path / "out"), "--verbose"])


def test_checkpoint_path_errors_are_one_line(tmp_path, capsys):
    a, b = _write_pair(tmp_path)
    assert predict_cli.main([str(a), str(b), "--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert predict_cli.main([str(a), str(b), "--checkpoint", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no checkpoint here" in err


def test_collection_lists_every_bad_image_before_building_the_model(tmp_path, capsys, monkeypatch):
    built = []
    monkeypatch.setattr(predict_cli, "build_matcher", lambda args: built.append(1) or _FakeMatcher())
    folder = tmp_path / "c"
    folder.mkdir()
    for k in range(3):
        _blob_image(folder / f"good{k}.png", 16, 16, (2, 10, 2, 10))
    for name in ("bad0.jpg", "bad1.png", "bad2.png"):
        (folder / name).write_bytes(b"not an image")
    assert predict_cli.main(["--collection", str(folder), *_random_init_args(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "3 of 6 images" in err and "--skip-bad" in err
    assert all(name in err for name in ("bad0.jpg", "bad1.png", "bad2.png"))
    assert not built and not (tmp_path / "out").exists()

    assert predict_cli.main(["--collection", str(folder), "--skip-bad", "--partners", "1",
                             *_random_init_args(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert "skipping 3 unreadable images" in err and "bad1.png" in err
    summary = json.loads((tmp_path / "out" / "collection.json").read_text())
    assert [m["image"] for m in summary["images"]] == ["good0.png", "good1.png", "good2.png"]
    assert summary["skipped"] == ["bad0.jpg", "bad1.png", "bad2.png"]


def test_user_errors_are_one_line_and_verbose_shows_the_traceback(tmp_path, capsys, monkeypatch):
    a = tmp_path / "a.png"
    _blob_image(a, 16, 16, (2, 10, 2, 10))
    args = [str(a), str(tmp_path / "nope.png"), *_random_init_args(tmp_path)]
    assert predict_cli.main(args) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    with pytest.raises(predict_cli.CliError, match="nope.png"):
        predict_cli.main([*args, "--verbose"])
    monkeypatch.setenv("MACOSNET_VERBOSE", "1")
    with pytest.raises(predict_cli.CliError, match="nope.png"):
        predict_cli.main(args)
