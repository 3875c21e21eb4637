"""Geometry ops against the PyTorch reference fixtures (geometry.npz) and closed-form properties."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_fixture
from macosnet_jax import geometry as g

REF = load_fixture("geometry")


def _xy(points_b2p):  # fixture layout (B, 2, P) -> (B, P, 2)
    return np.transpose(points_b2p, (0, 2, 1))


def _rel_close(actual, expected, rtol=1e-4, atol=1e-5):
    np.testing.assert_allclose(np.asarray(actual), expected, rtol=rtol, atol=atol)


@pytest.mark.parametrize("name,size", [("affine_grid_15", (15, 15)), ("affine_grid_240", (240, 240)),
                                       ("affine_grid_rect", (12, 20))])
def test_affine_grid_matches_reference(name, size):
    out = jax.vmap(lambda t: g.affine_grid(t, *size))(REF["affine_theta"])
    _rel_close(out, REF[name])


@pytest.mark.parametrize("name,size,reg", [("tps_grid_15", (15, 15), 0.0), ("tps_grid_15_reg02", (15, 15), 0.2),
                                           ("tps_grid_240", (240, 240), 0.0), ("tps_grid_rect", (12, 20), 0.0)])
def test_tps_grid_matches_reference(name, size, reg):
    out = jax.vmap(lambda t: g.tps_grid(t, *size, reg=reg))(REF["tps_theta"])
    _rel_close(out, REF[name], atol=5e-5)


def test_tps_inverse_and_control_points():
    np.testing.assert_array_equal(g.TPS_CONTROL_X, REF["tps_control_X"])
    np.testing.assert_array_equal(g.TPS_CONTROL_Y, REF["tps_control_Y"])
    _rel_close(g.tps_inverse_matrix(0.0), REF["tps_Li_reg0"], atol=5e-5)
    _rel_close(g.tps_inverse_matrix(0.2), REF["tps_Li_reg02"], atol=5e-5)


def test_point_transfers_match_reference():
    points = _xy(REF["points"])
    _rel_close(jax.vmap(g.affine_points)(REF["affine_theta"], points), _xy(REF["points_aff"]))
    _rel_close(jax.vmap(g.tps_points)(REF["tps_theta"], points), _xy(REF["points_tps"]), atol=5e-5)
    tps02 = jax.vmap(lambda t, p: g.tps_points(t, p, reg=0.2))(REF["tps_theta"], points)
    _rel_close(tps02, _xy(REF["points_tps_reg02"]), atol=5e-5)
    composed = jax.vmap(g.composed_points)(REF["affine_theta"], REF["tps_theta"], points)
    _rel_close(composed, _xy(REF["points_aff_tps"]), atol=5e-5)


def test_pixel_conversions_match_reference():
    for i, (h, w, _) in enumerate(REF["pix_im_size"]):
        unit = g.pixels_to_normalized(_xy(REF["pix_points"])[i], h, w)
        _rel_close(unit, _xy(REF["pix_points_to_unit"])[i], atol=1e-4)
        pix = g.normalized_to_pixels(_xy(REF["unit_points"])[i], h, w)
        _rel_close(pix, _xy(REF["unit_points_to_pix"])[i], atol=1e-4)
        np.testing.assert_allclose(unit[0], [-1, -1], atol=1e-6)
        np.testing.assert_allclose(unit[1], [1, 1], atol=1e-6)


def test_grid_sample_matches_reference():
    images = np.transpose(REF["gs_image"], (0, 2, 3, 1))
    out = jax.vmap(g.grid_sample)(images, REF["gs_grid"])
    _rel_close(out, np.transpose(REF["gs_output"], (0, 2, 3, 1)), atol=5e-5)


def test_image_warp_matches_reference():
    images = np.transpose(REF["warp_src_image"], (0, 2, 3, 1))
    out = jax.vmap(lambda im, t: g.warp_affine(im, t, 240, 240))(images, REF["affine_theta"])
    _rel_close(out, np.transpose(REF["warped_image_240"], (0, 2, 3, 1)), atol=1e-4)


# ---- properties ---------------------------------------------------------------------------------------------


def test_identity_thetas_give_identity_grids():
    base = np.asarray(g.base_grid(7, 11))
    np.testing.assert_array_equal(np.asarray(g.affine_grid(g.IDENTITY_AFFINE, 7, 11)), base)
    np.testing.assert_allclose(np.asarray(g.tps_grid(g.IDENTITY_TPS, 7, 11)), base, atol=2e-6)
    np.testing.assert_allclose(np.asarray(g.tps_grid(g.IDENTITY_TPS, 7, 11, reg=0.2)), base, atol=2e-6)


def test_tps_without_regularisation_interpolates_control_points():
    theta = g.IDENTITY_TPS + np.random.default_rng(0).uniform(-0.3, 0.3, 18).astype(np.float32)
    control = np.stack([g.TPS_CONTROL_X, g.TPS_CONTROL_Y], axis=1)
    mapped = g.tps_points(theta, control)
    np.testing.assert_allclose(np.asarray(mapped), theta.reshape(2, 9).T, atol=2e-5)


def test_offset_factor_variants():
    rng = np.random.default_rng(1)
    theta = g.IDENTITY_AFFINE + rng.uniform(-0.3, 0.3, 6).astype(np.float32)
    points = rng.uniform(-1, 1, (20, 2)).astype(np.float32)
    o = 227 / 210
    expected = points @ theta.reshape(2, 3)[:, :2].T + o * theta.reshape(2, 3)[:, 2]
    np.testing.assert_allclose(np.asarray(g.affine_points(theta, points, o)), expected, atol=1e-6)
    tps = g.IDENTITY_TPS + rng.uniform(-0.2, 0.2, 18).astype(np.float32)
    np.testing.assert_allclose(np.asarray(g.tps_points(tps, points, 0.2, o)),
                               o * np.asarray(g.tps_points(tps, points / o, 0.2)), atol=1e-5)


def test_composed_grid_equals_affine_of_tps_where_valid():
    rng = np.random.default_rng(2)
    aff = g.IDENTITY_AFFINE + rng.uniform(-0.2, 0.2, 6).astype(np.float32)
    tps = g.IDENTITY_TPS + rng.uniform(-0.15, 0.15, 18).astype(np.float32)
    grid, valid = g.composed_grid(aff, tps, 15, 15)
    direct = g.composed_points(aff, tps, g.base_grid(15, 15).reshape(-1, 2)).reshape(15, 15, 2)
    valid = np.asarray(valid)
    assert 20 < valid.sum() < 225
    np.testing.assert_allclose(np.asarray(grid)[valid], np.asarray(direct)[valid], atol=2e-5)
    assert np.all(np.asarray(grid)[~valid] == g.INVALID_COORDINATE)


def test_inside_is_strict_by_the_grid_tolerance():
    """geometry.inside: strictly inside (-1, 1)² by more than GRID_TOLERANCE; points a few ulps from the border
    (either side) are outside, points 50 tolerances in are inside."""
    near = 1.0 - 50 * g.GRID_TOLERANCE
    xs = np.array([-1.0 - 1e-7, -1.0 + 1e-7, -1.0, 1.0 - 1e-7, 1.0 + 1e-7, 1.0 - g.GRID_TOLERANCE / 2, -near, 0.0,
                   near], np.float32)
    expected = np.array([False] * 6 + [True] * 3)
    np.testing.assert_array_equal(np.asarray(g.inside(np.stack([xs, np.zeros_like(xs)], -1))), expected)
    np.testing.assert_array_equal(np.asarray(g.inside(np.stack([np.zeros_like(xs), xs], -1))), expected)
    assert g.inside(np.zeros((3, 4, 2), np.float32)).shape == (3, 4)


def test_grid_sample_identity_returns_image():
    image = np.random.default_rng(3).normal(size=(9, 13, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(g.grid_sample(image, g.base_grid(9, 13))), image, atol=1e-6)
    np.testing.assert_allclose(np.asarray(g.resize_bilinear(image, 9, 13)), image, atol=1e-6)


def test_grid_sample_known_shift_and_outside():
    image = np.arange(5 * 5, dtype=np.float32).reshape(5, 5, 1)
    grid = np.asarray(g.base_grid(5, 5)) + np.array([0.5, 0.0], np.float32)  # half a unit = one pixel right
    out = np.asarray(g.grid_sample(image, grid))[..., 0]
    np.testing.assert_allclose(out[:, :4], image[:, 1:, 0], atol=1e-5)
    np.testing.assert_allclose(out[:, 4], 0.0, atol=1e-6)  # beyond the last pixel: zero padding
    far = np.full((1, 1, 2), g.INVALID_COORDINATE, np.float32)
    assert float(g.grid_sample(image, far)[0, 0, 0]) == 0.0


def test_gradients_are_finite():
    rng = np.random.default_rng(4)
    image = rng.normal(size=(16, 16, 3)).astype(np.float32)

    def loss(image, theta_aff, theta_tps):
        grid = g.tps_grid(theta_tps, 8, 8)
        warped = g.grid_sample(image, grid)
        return jnp.sum(warped ** 2) + jnp.sum(g.warp_affine(image, theta_aff, 8, 8))

    grads = jax.grad(loss, argnums=(0, 1, 2))(image, g.IDENTITY_AFFINE + 0.01, g.IDENTITY_TPS)
    for grad in grads:
        assert np.all(np.isfinite(np.asarray(grad)))
    assert np.abs(np.asarray(grads[2])).sum() > 0


def test_bad_shapes_raise_clear_errors():
    with pytest.raises(ValueError, match="affine theta"):
        g.affine_points(np.zeros((2, 6), np.float32), np.zeros((3, 2), np.float32))
    with pytest.raises(ValueError, match="TPS theta"):
        g.tps_grid(np.zeros(6, np.float32), 4, 4)
    with pytest.raises(ValueError, match=r"\(P, 2\)"):
        g.affine_points(g.IDENTITY_AFFINE, np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match=r"\(H, W, C\)"):
        g.grid_sample(np.zeros((2, 4, 4, 3), np.float32), g.base_grid(4, 4))
    with pytest.raises(ValueError, match="3 channels"):
        g.normalize_image(np.zeros((4, 4, 4), np.uint8))


@pytest.mark.parametrize("seed", range(4))
def test_composed_grid_validity_ignores_last_bit_round_off(monkeypatch, seed):
    """Grids that differ by float32 round-off (as between CPUs with and without FMA) give the same validity.

    The identity cascade with the TPS grid nudged by a few ulps must keep every interior cell: the border ring is
    exactly ±1 (outside) and every interior sample lands on a node up to the nudge.
    """
    exact_tps_grid = g.tps_grid
    noise = np.random.default_rng(seed).choice(np.float32([-2.4e-7, -1.2e-7, 0.0, 1.2e-7, 2.4e-7]), (15, 15, 2))
    monkeypatch.setattr(g, "tps_grid", lambda *a, **k: exact_tps_grid(*a, **k) + noise)
    grid, valid = g.composed_grid(g.IDENTITY_AFFINE, g.IDENTITY_TPS, 15, 15)
    expected = np.zeros((15, 15), bool)
    expected[1:-1, 1:-1] = True
    np.testing.assert_array_equal(np.asarray(valid), expected)
    base = np.asarray(g.base_grid(15, 15))
    np.testing.assert_allclose(np.asarray(grid)[expected], base[expected], atol=1e-6)
    # Nudging the affine grid's border ring inwards by round-off must not make it valid either.
    exact_affine_grid = g.affine_grid
    monkeypatch.setattr(g, "affine_grid", lambda *a, **k: exact_affine_grid(*a, **k) * np.float32(1 - 1.2e-7))
    _, valid = g.composed_grid(g.IDENTITY_AFFINE, g.IDENTITY_TPS, 15, 15)
    np.testing.assert_array_equal(np.asarray(valid), expected)
