"""Matcher: raw images -> θ and point transfer, end to end against model_small.npz (legacy torch checkpoint)."""
import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import FIXTURES, load_fixture

from macosnet_jax import predict


@pytest.fixture(scope="module")
def matcher_and_ref():
    matcher = predict.Matcher.from_checkpoint(FIXTURES / "model_small_weakalign_legacy.pth.tar",
                                              layout="weakalign", image_size=60)
    return matcher, load_fixture("model_small")


def test_preprocess_matches_reference_pipeline(matcher_and_ref):
    _, ref = matcher_and_ref
    for i in range(2):
        raw = jnp.asarray(ref[f"raw_source_image_{i}"], jnp.float32)
        got = predict.preprocess(raw, 60)
        # README: resized 0..255 images agree to ~1.5e-3 -> / (255 * 0.224) after normalisation.
        np.testing.assert_allclose(got, ref["source_image"][i].transpose(1, 2, 0), atol=5e-3 / (255 * 0.224))


def test_match_and_transfer_end_to_end(matcher_and_ref):
    matcher, ref = matcher_and_ref
    for i in range(2):  # the raw images have different sizes: one jitted network forward at 60x60
        result = matcher.match(ref[f"raw_source_image_{i}"], ref[f"raw_target_image_{i}"])
        np.testing.assert_allclose(result["theta_aff"], ref["theta_aff"][i], atol=1e-4)
        np.testing.assert_allclose(result["theta_tps"], ref["theta_tps"][i], atol=1e-4)
        assert result["mask_a"] is None and result["mask_b"] is None
        points = matcher.transfer(ref["target_points"][i].T)
        np.testing.assert_allclose(points, ref["warped_points"][i].T, atol=1e-3)  # pixels of raw A
    assert matcher._forward._cache_size() == 1


def test_bad_inputs(matcher_and_ref):
    matcher, ref = matcher_and_ref
    fresh = predict.Matcher(matcher.model, matcher.variables, 60)
    with pytest.raises(ValueError, match="call match"):
        fresh.transfer(np.zeros((3, 2)))
    good = ref["raw_source_image_0"]
    with pytest.raises(ValueError, match=r"image_b must be an RGB image of shape \(H, W, 3\)"):
        matcher.match(good, good[..., 0])
    with pytest.raises(ValueError, match="image_a"):
        matcher.match(np.zeros((10, 10, 4), np.uint8), good)
    with pytest.raises(ValueError, match="dtype"):
        matcher.match(good.astype(np.int32), good)
    matcher.match(good, good)
    with pytest.raises(ValueError, match=r"points_b must have shape \(P, 2\)"):
        matcher.transfer(np.zeros((2, 7)))
    with pytest.raises(ValueError, match="built for 60"):
        predict.Matcher(matcher.model, matcher.variables, 64)
    with pytest.raises(FileNotFoundError, match="no such directory"):
        predict.Matcher.from_checkpoint("run/ckpt", layout="macosnet")
    with pytest.raises(ValueError, match="unknown layout"):
        predict.Matcher.from_checkpoint("x.pth", layout="ncnet")


class _JointStandIn(nn.Module):
    """A model with the joint model's interface: θ plus masks (identity θ; masks = mean colour of each image)."""
    image_size: int = 8

    @nn.compact
    def __call__(self, image_a, image_b, train=False):
        batch = image_a.shape[0]
        return {"theta_aff": jnp.tile(jnp.array([1.0, 0, 0, 0, 1, 0]), (batch, 1)),
                "theta_tps": jnp.tile(jnp.array([-1.0, -1, -1, 0, 0, 0, 1, 1, 1, -1, 0, 1, -1, 0, 1, -1, 0, 1]),
                                      (batch, 1)),
                "mask_a": image_a.mean(-1), "mask_b": image_b.mean(-1)}


def test_masks_pass_through_and_identity_transfer():
    matcher = predict.Matcher(_JointStandIn(), {}, 8)
    image_a = np.full((20, 30, 3), 255, np.uint8)
    image_b = np.zeros((10, 40, 3), np.uint8)
    result = matcher.match(image_a, image_b)
    assert result["mask_a"].shape == (8, 8) and result["mask_b"].shape == (8, 8)
    assert result["mask_a"].mean() > result["mask_b"].mean()
    # Identity maps corner pixel to corner pixel: (1, 1) -> (1, 1), (40, 10) -> (30, 20) (1-indexed).
    points = matcher.transfer(np.array([[1.0, 1.0], [40.0, 10.0], [20.5, 5.5]]))
    np.testing.assert_allclose(points, [[1, 1], [30, 20], [1 + 19.5 * 29 / 39, 1 + 4.5 * 19 / 9]], atol=1e-4)
