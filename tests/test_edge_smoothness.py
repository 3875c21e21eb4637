"""The colour-affinity smoothness of the masks (losses.edges) against a NumPy double loop and its properties."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from macosnet_jax import geometry, losses
from macosnet_jax.losses.edges import edge_aware_smoothness, unnormalize_image, window_offsets


def _reference(mask, image, sigma, radius, dilation):
    """Every ordered pixel pair (i, j) with j in i's dilated window, j != i, halved: each unordered pair once."""
    height, width = mask.shape
    total = 0.0
    for y in range(height):
        for x in range(width):
            for dy in range(-radius, radius + 1):
                for dx in range(-radius, radius + 1):
                    v, u = y + dy * dilation, x + dx * dilation
                    if (dy, dx) == (0, 0) or not (0 <= v < height and 0 <= u < width):
                        continue
                    weight = np.exp(-np.sum((image[y, x] - image[v, u]) ** 2) / (2 * sigma ** 2))
                    total += 0.5 * weight * (mask[y, x] * (1 - mask[v, u]) + mask[v, u] * (1 - mask[y, x]))
    return total / (height * width)


@pytest.mark.parametrize("radius,dilation,sigma", [(1, 1, 0.3), (2, 2, 0.1), (2, 3, 0.5)])
def test_smoothness_is_the_double_loop(radius, dilation, sigma):
    rng = np.random.default_rng(radius * 10 + dilation)
    mask = rng.uniform(size=(9, 11)).astype(np.float32)
    image = rng.uniform(size=(9, 11, 3)).astype(np.float32)
    got = edge_aware_smoothness(jnp.asarray(mask), jnp.asarray(image), sigma=sigma, radius=radius,
                                dilation=dilation)
    np.testing.assert_allclose(float(got), _reference(mask, image, sigma, radius, dilation), rtol=1e-5)


def _reference_gradient(mask, image, sigma, radius, dilation):
    """d/dp_i of the term: Σ over i's neighbours j (both directions) of w_ij (1 − 2 p_j), over H·W."""
    height, width = mask.shape
    grad = np.zeros_like(mask, dtype=np.float64)
    for y in range(height):
        for x in range(width):
            for dy in range(-radius, radius + 1):
                for dx in range(-radius, radius + 1):
                    v, u = y + dy * dilation, x + dx * dilation
                    if (dy, dx) == (0, 0) or not (0 <= v < height and 0 <= u < width):
                        continue
                    weight = np.exp(-np.sum((image[y, x] - image[v, u]) ** 2) / (2 * sigma ** 2))
                    grad[y, x] += weight * (1 - 2 * mask[v, u])
    return grad / (height * width)


@pytest.mark.parametrize("radius,dilation,sigma", [(1, 1, 0.3), (3, 3, 0.1), (2, 5, 0.5)])
def test_smoothness_gradient_is_the_double_loop(radius, dilation, sigma):
    # (2, 5) reaches past the 9-row image: those neighbours do not exist and add nothing.
    rng = np.random.default_rng(radius + dilation)
    mask = rng.uniform(size=(9, 11)).astype(np.float32)
    image = rng.uniform(size=(9, 11, 3)).astype(np.float32)
    got = jax.grad(lambda m: edge_aware_smoothness(m, jnp.asarray(image), sigma=sigma, radius=radius,
                                                   dilation=dilation))(jnp.asarray(mask))
    np.testing.assert_allclose(np.asarray(got), _reference_gradient(mask, image, sigma, radius, dilation),
                               rtol=1e-4, atol=1e-7)


def test_window_offsets_hold_each_unordered_neighbour_once():
    offsets = window_offsets(2, 3)
    assert len(offsets) == 12 and (0, 0) not in offsets
    full = set(offsets) | {(-dy, -dx) for dy, dx in offsets}
    assert full == {(dy * 3, dx * 3) for dy in range(-2, 3) for dx in range(-2, 3)} - {(0, 0)}
    with pytest.raises(ValueError, match="radius and dilation must be >= 1"):
        window_offsets(0, 1)


def test_a_boundary_on_the_colour_edge_costs_less_than_one_across_a_region():
    # Two colour regions split at column 6; a mask that follows the split is cheaper than one shifted by 2 px,
    # and its gradient pulls the shifted boundary back towards the edge.
    image = np.zeros((12, 12, 3), np.float32)
    image[:, 6:] = [0.9, 0.2, 0.1]
    on_edge = np.zeros((12, 12), np.float32)
    on_edge[:, 6:] = 1.0
    shifted = np.zeros((12, 12), np.float32)
    shifted[:, 8:] = 1.0
    cost = lambda m: edge_aware_smoothness(m, jnp.asarray(image), sigma=0.1)
    assert float(cost(jnp.asarray(on_edge))) < 1e-6 < float(cost(jnp.asarray(shifted)))
    grad = np.asarray(jax.grad(cost)(jnp.asarray(shifted * 0.98 + 0.01)))
    assert np.all(grad[:, 6:8] < 0)  # the red pixels left out of the mask are pushed up
    assert float(cost(jnp.ones((12, 12)))) == 0.0


def test_the_term_reads_normalised_images_and_is_off_by_default():
    rng = np.random.default_rng(0)
    rgb = rng.uniform(size=(2, 8, 8, 3)).astype(np.float32)
    normalised = geometry.normalize_image(rgb * 255.0)
    np.testing.assert_allclose(np.asarray(unnormalize_image(normalised)), rgb, atol=1e-6)
    logits = {k: jnp.asarray(rng.normal(size=(2, 8, 8)).astype(np.float32)) for k in "ab"}
    options = losses.LossOptions(weights={"smoothness": 2.0}, smoothness_sigma=0.2)
    loss, terms = losses.total_loss({"mask_logits": logits}, images={"a": normalised, "b": normalised},
                                    options=options)
    want = np.mean([edge_aware_smoothness(jax.nn.sigmoid(logits[k][n]), jnp.asarray(rgb[n]), sigma=0.2)
                    for k in "ab" for n in range(2)])
    np.testing.assert_allclose(float(terms["smoothness"]), want, rtol=1e-5)
    np.testing.assert_allclose(float(loss), 2.0 * want, rtol=1e-5)
    assert "smoothness" not in losses.LossOptions().weights
    with pytest.raises(ValueError, match="the smoothness term needs `images`"):
        losses.total_loss({"mask_logits": logits}, options=options)
