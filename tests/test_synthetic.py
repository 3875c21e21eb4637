"""Tests of the built-in synthetic data: synthetic_objects (macosnet_jax.data.synthetic) and synthetic_warps
(macosnet_jax.data.warps). Tiny images (32-48 px) so the file runs in seconds on 2 shared cores."""
import numpy as np
import pytest

import jax

from macosnet_jax import geometry
from macosnet_jax.data import synthetic, warps

SIZE = 48
# Jitted once per shape: eager op-by-op dispatch would dominate these tiny tests.
warp_example = jax.jit(warps.warp_example, static_argnums=2)


@pytest.fixture(scope="module")
def objects():
    return synthetic.make_synthetic_objects(12, SIZE, seed=3, num_categories=4)


# ----------------------------------------------------------------------------------------------------------------
# synthetic_objects


def test_shapes_dtypes_and_ranges(objects):
    assert objects["image"].shape == (12, SIZE, SIZE, 3) and objects["image"].dtype == np.uint8
    assert objects["mask"].shape == (12, SIZE, SIZE) and objects["mask"].dtype == np.uint8
    assert set(np.unique(objects["mask"])) <= {0, 1}
    assert objects["keypoints"].shape == (12, synthetic.NUM_LANDMARKS, 2)
    assert objects["keypoints"].dtype == np.float32
    assert objects["visible"].shape == (12, synthetic.NUM_LANDMARKS) and objects["visible"].dtype == bool
    np.testing.assert_array_equal(objects["category"], np.arange(12) % 4)  # balanced categories
    kp = objects["keypoints"][objects["visible"]]
    assert np.all((kp >= 1) & (kp <= SIZE))
    # Every object covers a sensible part of the image and images are not flat.
    area = objects["mask"].mean(axis=(1, 2))
    assert np.all((area > 0.05) & (area < 0.6)), area
    assert np.all(objects["image"].reshape(12, -1).std(axis=1) > 10)


def test_deterministic_and_independent_of_chunking(objects):
    again = synthetic.make_synthetic_objects(12, SIZE, seed=3, num_categories=4)
    for key in objects:
        np.testing.assert_array_equal(objects[key], again[key])
    subset = synthetic.render_synthetic_objects([7, 2], SIZE, seed=3, num_categories=4)
    for key in ("image", "mask", "keypoints", "category"):
        np.testing.assert_array_equal(subset[key], objects[key][[7, 2]])
    other = synthetic.make_synthetic_objects(2, SIZE, seed=4, num_categories=4)
    assert not np.array_equal(other["image"], objects["image"][:2])


def test_keypoints_lie_on_the_object_mask(objects):
    """Landmarks are placed by inverting the generating map; they must land inside the rendered silhouette."""
    for i in range(12):
        vis = objects["visible"][i]
        cols, rows = np.rint(objects["keypoints"][i][vis] - 1).astype(int).T  # 1-indexed -> 0-indexed
        assert np.all(objects["mask"][i][rows, cols] == 1), i


def test_generating_map_round_trip_and_mask_recomputed_in_numpy(objects):
    """Independent check of the renderer: the mask is {q : |u(q)| < R(phi(u))} computed here with numpy, and the
    keypoints map back to the family's canonical landmarks."""
    families = synthetic.make_families(4)
    for i in (0, 5):
        pose = synthetic.instance_pose(3, i, num_categories=4)
        category = objects["category"][i]
        lin = np.linspace(-1, 1, SIZE)
        q = np.stack(np.meshgrid(lin, lin), -1)
        u = np.asarray(synthetic.image_to_canonical(q.astype(np.float32), *pose), np.float64)
        phi = np.arctan2(u[..., 1], u[..., 0])
        mask = np.hypot(u[..., 0], u[..., 1]) < synthetic.outline_radius(families, category, phi)
        agree = np.mean(mask == objects["mask"][i].astype(bool))
        assert agree > 0.998, agree
        normalised = np.asarray(geometry.pixels_to_normalized(objects["keypoints"][i], SIZE, SIZE))
        back = np.asarray(synthetic.image_to_canonical(normalised, *pose))
        np.testing.assert_allclose(back, families.landmarks[category], atol=2e-5)


def test_families_are_distinct_and_landmarks_inside_outline():
    families = synthetic.make_families(6)
    lm = families.landmarks
    assert lm.shape == (6, synthetic.NUM_LANDMARKS, 2)
    for a in range(6):
        for b in range(a + 1, 6):
            assert np.abs(lm[a] - lm[b]).max() > 0.05
    radius = np.hypot(lm[..., 0], lm[..., 1])
    outline = synthetic.outline_radius(families, np.arange(6)[:, None], np.arctan2(lm[..., 1], lm[..., 0]))
    assert np.all(radius < outline)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="num_categories"):
        synthetic.make_synthetic_objects(2, SIZE, num_categories=0)
    with pytest.raises(ValueError, match="size"):
        synthetic.make_synthetic_objects(2, 4)



def _backdrop_agreement(objects, seed, a, b, pose_b=None, num_categories=4):
    """Fraction of A's background pixels whose colour is found at the same place of the scene in B (nearest)."""
    size = objects["image"].shape[1]
    q = np.asarray(geometry.base_grid(size, size)).reshape(-1, 2)
    matrix_a, t_a = synthetic.backdrop_pose(seed, a, num_categories)
    matrix_b, t_b = pose_b or synthetic.backdrop_pose(seed, b, num_categories)
    q_b = ((q - t_a) @ np.linalg.inv(matrix_a).T) @ np.asarray(matrix_b).T + t_b
    px = np.rint((q_b + 1) / 2 * (size - 1)).astype(int)
    sel = (px >= 0).all(1) & (px < size).all(1) & (objects["mask"][a].reshape(-1) == 0)
    colour_a = objects["image"][a].reshape(-1, 3)[sel].astype(int)
    colour_b = objects["image"][b][px[sel, 1], px[sel, 0]].astype(int)
    background_b = objects["mask"][b][px[sel, 1], px[sel, 0]] == 0
    return np.mean(np.abs(colour_a - colour_b).max(-1)[background_b] < 40)


def test_backdrop_is_one_scene_per_category_seen_through_each_images_own_pose():
    clutter = synthetic.make_synthetic_objects(8, SIZE, seed=3, num_categories=4)
    backdrop = synthetic.make_synthetic_objects(8, SIZE, seed=3, num_categories=4, background="backdrop")
    for key in ("mask", "keypoints", "visible", "category"):  # the object and its pose do not change
        np.testing.assert_array_equal(backdrop[key], clutter[key], err_msg=key)
    assert not np.array_equal(backdrop["image"], clutter["image"])
    # Images i and i + 4 share a category (index % 4): their backgrounds agree through the two backdrop poses...
    for a in range(3):
        assert _backdrop_agreement(backdrop, 3, a, a + 4) > 0.75
    # ... and not across categories, nor through a wrong pose.
    assert _backdrop_agreement(backdrop, 3, 0, 5) < 0.3
    assert _backdrop_agreement(backdrop, 3, 0, 4, pose_b=(np.eye(2), np.zeros(2))) < 0.6
    # The per-image clutter has no such shared scene.
    assert _backdrop_agreement(clutter, 3, 0, 4) < 0.5
    with pytest.raises(ValueError, match="background must be one of"):
        synthetic.make_synthetic_objects(2, SIZE, background="sky")


# ----------------------------------------------------------------------------------------------------------------
# synthetic_warps


def _ramp_image(size):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (size, size, 3)).astype(np.float32)


def test_identity_theta_reproduces_the_source():
    image = _ramp_image(33)
    for theta in (geometry.IDENTITY_AFFINE, geometry.IDENTITY_TPS):
        out = warp_example(image, np.asarray(theta), 33)
        # The float32 TPS solve reproduces the identity to ~1e-6 normalised: < 0.01 grey levels here.
        np.testing.assert_allclose(np.asarray(out["image_b"]), image, atol=1e-2)
        np.testing.assert_allclose(np.asarray(out["image_a"]), image, atol=1e-3)


def test_known_shift_goes_the_right_way_and_reflects():
    """θ translation +0.5 in x: target(q) = source(q + 0.5) -> 8 pixels on a 33-px image; beyond the right edge
    the source is mirrored about its last pixel centre."""
    size = 33
    image = _ramp_image(size)
    theta = np.array([1, 0, 0.5, 0, 1, 0], np.float32)
    out = np.asarray(warp_example(image, theta, size)["image_b"])
    np.testing.assert_allclose(out[:, :size - 8], image[:, 8:], atol=1e-3)
    reflected = np.concatenate([image, image[:, -2::-1]], axis=1)  # numpy mode='reflect' on the right
    np.testing.assert_allclose(out, reflected[:, 8:8 + size], atol=1e-3)


def test_quarter_turn_matches_numpy_rotation():
    size = 17
    image = _ramp_image(size)
    theta = np.array([0, -1, 0, 1, 0, 0], np.float32)  # target(x, y) = source(-y, x)
    out = np.asarray(warp_example(image, theta, size)["image_b"])
    rows, cols = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    np.testing.assert_allclose(out, image[cols, size - 1 - rows], atol=1e-3)


def test_reflect_coordinates_closed_form():
    x = np.array([-1.0, 0.3, 1.0, 1.5, 3.0, -1.25, -3.5, 5.2], np.float32)
    expected = np.array([-1.0, 0.3, 1.0, 0.5, -1.0, -0.75, 0.5, 0.8], np.float32)
    np.testing.assert_allclose(np.asarray(warps.reflect_coordinates(x)), expected, atol=1e-6)


def test_random_theta_ranges():
    keys = jax.random.split(jax.random.key(0), 512)
    theta = np.asarray(jax.jit(jax.vmap(warps.random_affine_theta))(keys)).reshape(-1, 2, 3)
    matrix = theta[:, :, :2]
    assert np.all(np.abs(theta[:, :, 2]) <= 0.25)
    singular = np.linalg.svd(matrix, compute_uv=False)
    assert np.all((singular >= 0.75 - 1e-5) & (singular <= 1.25 + 1e-5))
    # Polar decomposition A = R(alpha) S with S symmetric positive definite: alpha is the rotation draw.
    alpha = np.arctan2(matrix[:, 1, 0] - matrix[:, 0, 1], matrix[:, 0, 0] + matrix[:, 1, 1])
    assert np.all(np.abs(alpha) <= np.pi / 12 + 1e-5) and np.abs(alpha).max() > 0.2
    tps = np.asarray(jax.jit(jax.vmap(warps.random_tps_theta))(keys))
    offset = tps - geometry.IDENTITY_TPS
    assert np.all(np.abs(offset) <= 0.4) and np.abs(offset).max() > 0.38


@pytest.mark.parametrize("kind", ["affine", "tps"])
def test_warp_batch_keypoints_follow_the_object(objects, kind):
    """Target keypoints are the source keypoints pulled back through θ: they must land on the warped mask, and θ
    must send them back onto the source keypoints (θ maps B to A)."""
    out = jax.device_get(warps.synthetic_warp_batch(
        jax.random.key(1), objects["image"], kind=kind, size=40, masks=objects["mask"],
        keypoints=objects["keypoints"], visible=objects["visible"]))
    assert out["image_a"].shape == (12, 40, 40, 3) and out["image_b"].dtype == np.uint8
    assert out["theta"].shape == (12, 6 if kind == "affine" else 18)
    vis = out["visible_b"]
    assert vis.mean() > 0.6
    hits = []
    for i in range(12):
        cols, rows = np.rint(out["keypoints_b"][i][vis[i]] - 1).astype(int).T
        hits.extend(out["mask_b"][i][rows, cols])
        pb = np.asarray(geometry.pixels_to_normalized(out["keypoints_b"][i][vis[i]], 40, 40))
        pa = np.asarray(geometry.pixels_to_normalized(out["keypoints_a"][i][vis[i]], 40, 40))
        np.testing.assert_allclose(np.asarray(warps.theta_points(out["theta"][i], pb)), pa, atol=2e-4)
    assert np.mean(hits) > 0.97, np.mean(hits)
    assert np.all(out["keypoints_b"][~vis] == -1)


def test_warp_iterator_deterministic_resumable_and_sliced(objects):
    def take(start_step, process_index=0, process_count=1, count=3, seed=5):
        it = warps.make_warp_iterator(objects, batch_size=4, image_size=32, seed=seed, start_step=start_step,
                                      process_index=process_index, process_count=process_count)
        return [next(it) for _ in range(count)]

    full = take(0, count=4)
    resumed = take(2, count=2)
    for a, b in zip(full[2:], resumed):
        assert set(a) == set(b)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    other_seed = take(0, count=1, seed=6)[0]
    assert not np.array_equal(other_seed["theta"], full[0]["theta"])
    # Three epochs of 12 images: each epoch visits every image once.
    seen = np.concatenate([b["index"] for b in take(0, count=9)])
    for epoch in range(3):
        assert sorted(seen[12 * epoch:12 * (epoch + 1)]) == list(range(12))
    # Two processes read disjoint halves.
    p0 = np.concatenate([b["index"] for b in take(0, 0, 2, count=3)])
    p1 = np.concatenate([b["index"] for b in take(0, 1, 2, count=3)])
    assert set(p0) == set(range(6)) and set(p1) == set(range(6, 12))


def test_image_folder_source(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (20 + 7 * i, 30, 3), dtype=np.uint8) for i in range(3)]
    for i, im in enumerate(images):
        Image.fromarray(im).save(tmp_path / f"{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    loaded = warps.load_image_folder(tmp_path, 16)
    assert loaded.shape == (3, 16, 16, 3) and loaded.dtype == np.uint8
    for im, out in zip(images, loaded):  # corner-aligned resize keeps the corner pixels
        np.testing.assert_array_equal(out[0, 0], im[0, 0])
        np.testing.assert_array_equal(out[-1, -1], im[-1, -1])
    batch = next(warps.make_warp_iterator(str(tmp_path), batch_size=2, image_size=16, seed=0, kind="tps"))
    assert batch["image_b"].shape == (2, 16, 16, 3) and batch["theta"].shape == (2, 18)


def test_warp_source_errors(tmp_path):
    with pytest.raises(KeyError, match="'image'"):
        next(warps.make_warp_iterator({"img": np.zeros((2, 8, 8, 3), np.uint8)}, batch_size=1, image_size=8, seed=0))
    with pytest.raises(FileNotFoundError, match="no images"):
        warps.load_image_folder(tmp_path, 16)
    with pytest.raises(ValueError, match="kind"):
        warps.synthetic_warp_batch(jax.random.key(0), np.zeros((1, 8, 8, 3), np.uint8), kind="bogus")
