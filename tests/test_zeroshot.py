"""Zero-shot keypoint transfer on DINOv2 patch features: against a NumPy brute force, a closed-form property
(identical images, points on patch centres), and end to end on the dummy benchmark builders."""
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from macosnet_jax import evaluate, geometry, zeroshot
from macosnet_jax.models import dinov2 as dv
from macosnet_jax.models.regression import identity_theta

REPO = pathlib.Path(__file__).resolve().parents[1]


def _numpy_transfer(fa, fb, points, size, method, temperature):
    """Brute force: per point, bilinear descriptor of B in float64, cosine to every patch of A, NN / soft-argmax."""
    h, w, _ = fa.shape
    centre = lambda n: np.array([-1 + 2 * (14 * i + 6.5) / (size - 1) for i in range(n)])
    cx, cy = centre(w), centre(h)
    out = []
    for x, y in points:
        col = np.clip(np.interp(x, cx, np.arange(w)), 0, w - 1)
        row = np.clip(np.interp(y, cy, np.arange(h)), 0, h - 1)
        d = np.zeros(fa.shape[-1])
        for r in range(h):
            for c in range(w):
                d += max(0, 1 - abs(row - r)) * max(0, 1 - abs(col - c)) * fb[r, c]
        d /= np.linalg.norm(d)
        sim = np.einsum("hwd,d->hw", fa, d).reshape(-1)
        grid = np.stack(np.meshgrid(cx, cy, indexing="xy"), -1).reshape(-1, 2)
        if method == "nn":
            out.append(grid[np.argmax(sim)])
        else:
            p = np.exp((sim - sim.max()) / temperature)
            out.append((p / p.sum()) @ grid)
    return np.array(out)


@pytest.mark.parametrize("method", zeroshot.METHODS)
def test_transfer_matches_numpy_brute_force(method):
    rng = np.random.default_rng(0)
    size, h, w = 84, 6, 6
    fa, fb = (rng.normal(size=(h, w, 8)) for _ in range(2))
    fa /= np.linalg.norm(fa, axis=-1, keepdims=True)
    fb /= np.linalg.norm(fb, axis=-1, keepdims=True)
    points = rng.uniform(-1, 1, size=(20, 2))
    got = zeroshot.transfer_normalized(jnp.asarray(fa, jnp.float32), jnp.asarray(fb, jnp.float32),
                                       jnp.asarray(points, jnp.float32), size, method, 0.1)
    np.testing.assert_allclose(got, _numpy_transfer(fa, fb, points, size, method, 0.1), atol=2e-5)


def test_identical_images_map_patch_centres_to_themselves():
    """Same image twice, points on B's patch centres in original pixels -> NN returns the same points."""
    size = 84
    model = dv.dinov2("tiny", pos_grid=size // 14)
    variables = jax.jit(model.init)(jax.random.key(1), jnp.zeros((1, size, size, 3)))
    image = np.random.default_rng(2).integers(0, 256, (100, 130, 3), dtype=np.uint8)
    matcher = zeroshot.ZeroShotMatcher(model, variables, size, "nn")
    centres = np.asarray(zeroshot.patch_centres(size // 14, size))
    normalized = np.stack(np.meshgrid(centres, centres), -1).reshape(-1, 2)
    points = np.asarray(geometry.normalized_to_pixels(normalized, 100, 130))
    moved = matcher(image, image)["point_transfer"](points, (100, 130), (100, 130))
    np.testing.assert_allclose(moved, points, atol=1e-3)


def test_point_transfer_predictor_scored_like_thetas():
    """A point_transfer predictor that reproduces the identity gives the same PCK as identity thetas."""
    rng = np.random.default_rng(3)
    examples = [dict(image_a=np.zeros((50, 60, 3), np.uint8), image_b=np.zeros((40, 70, 3), np.uint8),
                     keypoints_a=rng.uniform(1, 50, (5, 2)).astype(np.float32),
                     keypoints_b=rng.uniform(1, 40, (5, 2)).astype(np.float32), category=0) for _ in range(3)]
    identity = {"theta_aff": identity_theta(6), "theta_tps": identity_theta(18)}

    def as_points(points_b, size_a, size_b):
        return geometry.normalized_to_pixels(geometry.pixels_to_normalized(points_b, *size_b), *size_a)

    thetas = evaluate.evaluate_keypoints(examples, lambda a, b: identity)
    points = evaluate.evaluate_keypoints(examples, lambda a, b: {"point_transfer": as_points})
    for name in thetas:
        for column, value in thetas[name].rows["all"].items():
            assert points[name].rows["all"][column] == pytest.approx(value, abs=1e-9), (name, column)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from macosnet_datasets import build
    out = str(tmp_path_factory.mktemp("tfds"))
    for name in ("pf_pascal", "spair71k"):
        build.build(name, str(REPO / "datasets" / name / "dummy_data"), out)
    return out


@pytest.mark.parametrize("dataset,table", [("pf_pascal", "img224"), ("spair71k", "bbox")])
def test_zeroshot_on_dummy_builders(dataset, table, data_dir):
    size = 56
    model = dv.dinov2("tiny", pos_grid=size // 14)
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, size, size, 3)))
    for method in zeroshot.METHODS:
        tables = evaluate.evaluate_dataset(dataset, zeroshot.ZeroShotMatcher(model, variables, size, method),
                                           data_dir=data_dir)
        row = tables[table].rows["all"]
        assert tables[table].counts["all"] > 0
        assert all(0.0 <= v <= 1.0 for v in row.values()), row


def test_only_keypoint_benchmarks_are_accepted():
    from macosnet_jax import errors
    for name in ("spair71k", "pf_pascal", "pf_willow/macosnet"):
        zeroshot.check_dataset(name)
    for name in ("tss", "internet", "synthetic_objects"):
        with pytest.raises(errors.UserError, match=f"--dataset {name}: zero-shot transfer predicts keypoints"):
            zeroshot.check_dataset(name)


def test_command_errors_are_one_line_before_anything_is_loaded():
    import subprocess
    import sys
    result = subprocess.run([sys.executable, "-m", "macosnet_jax.zeroshot", "--random_size", "tiny", "--dataset",
                             "tss"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1 and "--dataset tss: zero-shot transfer predicts keypoints only" in lines[0]
    assert "Traceback" not in result.stderr
