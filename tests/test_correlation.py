"""Correlation ops against the reference fixtures (correlation.npz) and an explicit-loop NumPy version."""
import jax
import numpy as np
import pytest

from conftest import load_fixture
from macosnet_jax import correlation as c

REF = load_fixture("correlation")


def _hwc(x):  # NCHW -> NHWC
    return np.transpose(x, (0, 2, 3, 1))


def test_l2_normalize_matches_reference():
    np.testing.assert_allclose(np.asarray(c.l2_normalize(_hwc(REF["fA_raw"]))), _hwc(REF["fA"]), atol=1e-5, rtol=1e-4)


def test_correlation_matches_reference():
    fa, fb = _hwc(REF["fA"]), _hwc(REF["fB"])
    raw = jax.vmap(c.correlation)(fa, fb)
    np.testing.assert_allclose(np.asarray(raw), _hwc(REF["corr_AB"]), atol=1e-5, rtol=1e-4)
    norm = jax.vmap(c.normalize_correlation)(raw)
    np.testing.assert_allclose(np.asarray(norm), _hwc(REF["corr_AB_norm"]), atol=1e-5, rtol=1e-4)
    swapped = jax.vmap(lambda r: c.normalize_correlation(c.swap_correlation(r)))(raw)
    np.testing.assert_allclose(np.asarray(swapped), _hwc(REF["corr_BA_norm"]), atol=1e-5, rtol=1e-4)


def test_non_square_layout_matches_reference():
    fa, fb = _hwc(REF["small_fA"])[0], _hwc(REF["small_fB"])[0]
    raw = c.correlation(fa, fb)
    np.testing.assert_allclose(np.asarray(raw), _hwc(REF["small_corr"])[0], atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(c.normalize_correlation(raw)), _hwc(REF["small_corr_norm"])[0],
                               atol=1e-5, rtol=1e-4)


def test_against_explicit_loops():
    rng = np.random.default_rng(0)
    h, w, ch = 3, 5, 4
    fa, fb = rng.normal(size=(2, h, w, ch)).astype(np.float32)
    expected = np.zeros((h, w, h * w), np.float32)
    for i in range(h):
        for j in range(w):
            for ya in range(h):
                for xa in range(w):
                    expected[i, j, xa * h + ya] = fa[ya, xa] @ fb[i, j]
    np.testing.assert_allclose(np.asarray(c.correlation(fa, fb)), expected, atol=1e-5)


def test_swap_is_correlation_with_roles_swapped_and_an_involution():
    rng = np.random.default_rng(1)
    fa, fb = rng.normal(size=(2, 4, 6, 8)).astype(np.float32)
    ab = c.correlation(fa, fb)
    np.testing.assert_allclose(np.asarray(c.swap_correlation(ab)), np.asarray(c.correlation(fb, fa)), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(c.swap_correlation(c.swap_correlation(ab))), np.asarray(ab))


def test_bad_shapes():
    with pytest.raises(ValueError, match="equal shapes"):
        c.correlation(np.zeros((4, 4, 3)), np.zeros((4, 5, 3)))
    with pytest.raises(ValueError, match="h·w"):
        c.swap_correlation(np.zeros((4, 4, 15)))
