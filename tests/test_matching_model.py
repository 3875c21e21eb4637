"""Two-stage matching model: end-to-end and stage-wise parity with model_small.npz; heads; gradients; errors."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_fixture

from macosnet_jax import correlation, geometry, weights
from macosnet_jax.models.matching import MatchingModel, init_matching_model, normalized_correlation
from macosnet_jax.models.regression import FeatureRegression, ValidConv, valid_conv


def _nhwc(x):
    return np.transpose(x, (0, 2, 3, 1))


def _close(got, want, rtol=1e-4, name=""):
    """|got - want| <= rtol * max|want| (relative to the array's scale: values near 0 are not ill-posed)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, (name, got.shape, want.shape)
    np.testing.assert_allclose(got, want, rtol=0, atol=rtol * np.abs(want).max(), err_msg=name)


@pytest.fixture(scope="module")
def small():
    ref = load_fixture("model_small")
    model, variables = weights.convert_torch_checkpoint({k: v for k, v in ref.items() if "." in k}, "weakalign",
                                                        image_size=60)
    forward = jax.jit(lambda v, a, b: model.apply(v, a, b, mutable=["intermediates"]))
    out, state = forward(variables, _nhwc(ref["source_image"]), _nhwc(ref["target_image"]))
    return ref, model, variables, out, state["intermediates"]


def test_end_to_end_parity(small):
    ref, _, _, out, inter = small
    _close(out["theta_aff"], ref["theta_aff"], 1e-5, "theta_aff")
    _close(out["theta_tps"], ref["theta_tps"], 1e-4, "theta_tps")
    _close(out["features_a"]["features"], _nhwc(ref["features_source_raw"]), 1e-5, "features_source_raw")
    _close(out["features_b"]["features"], _nhwc(ref["features_target_raw"]), 1e-5, "features_target_raw")
    _close(out["features_a_warped"]["features"], _nhwc(ref["features_source_wrp_raw"]), 1e-4, "features_wrp")
    _close(out["corr_1"], _nhwc(ref["correlation_1"]), 1e-5, "correlation_1")
    _close(out["corr_2"], _nhwc(ref["correlation_2"]), 1e-4, "correlation_2")
    _close(out["image_a_warped"], _nhwc(ref["source_image_wrp"]), 1e-4, "source_image_wrp")
    _close(inter["affine_regression"]["conv_out"][0], _nhwc(ref["reg1_conv_out"]), 1e-5, "reg1_conv_out")
    _close(inter["tps_regression"]["conv_out"][0], _nhwc(ref["reg2_conv_out"]), 1e-4, "reg2_conv_out")
    # The skips are there for the decoder: stem at stride 2, layer1 = features here.
    assert out["features_a"]["stem"].shape == (2, 30, 30, 64)
    np.testing.assert_array_equal(out["features_a"]["layer1"], out["features_a"]["features"])
    # Normalised features as the reference's FeatureExtraction output.
    _close(correlation.l2_normalize(out["features_a"]["features"]), _nhwc(ref["features_source"]), 1e-5)


def test_stagewise_parity(small):
    """Stage 2 from the stored warped image: isolates it from stage-1 round-off."""
    ref, model, variables, _, _ = small
    encode = jax.jit(lambda v, x: model.apply(v, x, method=MatchingModel.encode)["features"])
    f_wrp = encode(variables, _nhwc(ref["source_image_wrp"]))
    _close(f_wrp, _nhwc(ref["features_source_wrp_raw"]), 1e-5, "features_source_wrp_raw")
    corr_2 = normalized_correlation(_nhwc(ref["features_source_wrp_raw"]), _nhwc(ref["features_target_raw"]))
    _close(corr_2, _nhwc(ref["correlation_2"]), 1e-5, "correlation_2")
    theta_tps = jax.jit(lambda v, c: model.apply(v, c, method=MatchingModel.regress_tps))(
        variables, _nhwc(ref["correlation_2"]))
    _close(theta_tps, ref["theta_tps"], 1e-5, "theta_tps")
    theta_aff = jax.jit(lambda v, c: model.apply(v, c, method=MatchingModel.regress_affine))(
        variables, _nhwc(ref["correlation_1"]))
    _close(theta_aff, ref["theta_aff"], 1e-5, "theta_aff")
    warped = jax.vmap(lambda im, th: geometry.warp_affine(im, th, 60, 60))(_nhwc(ref["source_image"]),
                                                                            ref["theta_aff"])
    _close(warped, _nhwc(ref["source_image_wrp"]), 1e-4, "source_image_wrp")


def test_final_map_matches_reference_points(small):
    ref, _, _, out, _ = small
    for i in range(2):
        got = geometry.composed_points(out["theta_aff"][i], out["theta_tps"][i], ref["target_points_norm"][i].T)
        np.testing.assert_allclose(got, ref["warped_points_norm"][i].T, atol=1e-4)


def _tiny_model(**kwargs):
    # ResNet-18, width 4, to layer1 at 16x16: 4x4 features -> 16-channel correlation; head kernels 3, 2.
    return MatchingModel(depth=18, last_layer="layer1", width=4, image_size=16, regression_channels=(8, 4),
                         regression_kernels=(3, 2), **kwargs)


def _images(seed, batch=2, size=16):
    key_a, key_b = jax.random.split(jax.random.PRNGKey(seed))
    return jax.random.normal(key_a, (batch, size, size, 3)), jax.random.normal(key_b, (batch, size, size, 3))


@pytest.fixture(scope="module")
def tiny():
    """One tiny random model, initialised once (compiles are the cost of these tests on a shared CPU)."""
    model = _tiny_model()
    return model, init_matching_model(model, jax.random.PRNGKey(1))


def test_gradients_finite_reach_every_module_and_bn_modes(tiny):
    model, variables = tiny
    a, b = _images(0)

    def loss(params):
        out, updates = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, a, b, train=True,
                                   mutable=["batch_stats"])
        return jnp.sum(out["theta_aff"] ** 2) + jnp.sum(out["theta_tps"] ** 2), updates["batch_stats"]
    grads, new_stats = jax.jit(jax.grad(loss, has_aux=True))(variables["params"])
    for module in ("encoder", "affine_regression", "tps_regression"):
        leaves = jax.tree_util.tree_leaves(grads[module])
        assert all(np.all(np.isfinite(g)) for g in leaves), module
        assert sum(float(jnp.abs(g).sum()) for g in leaves) > 0, module
    changed = jax.tree_util.tree_map(lambda x, y: bool(np.any(x != y)), variables["batch_stats"], new_stats)
    # Encoder BN frozen in training (SPEC §2); head BN trains with batch statistics.
    assert not any(jax.tree_util.tree_leaves(changed["encoder"]))
    assert all(jax.tree_util.tree_leaves(changed["affine_regression"]))
    assert all(jax.tree_util.tree_leaves(changed["tps_regression"]))


def test_batch_independence_in_eval(tiny):
    model, variables = tiny
    a, b = _images(2)
    apply = jax.jit(lambda v, x, y: model.apply(v, x, y)["theta_tps"])
    both = apply(variables, a, b)
    one = apply(variables, a[1:], b[1:])
    np.testing.assert_allclose(both[1:], one, rtol=1e-5, atol=1e-6)


def test_init_identity_heads():
    corr = jax.nn.relu(jax.random.normal(jax.random.PRNGKey(4), (2, 4, 4, 16)))
    for dim, identity in ((6, geometry.IDENTITY_AFFINE), (18, geometry.IDENTITY_TPS)):
        head = FeatureRegression(output_dim=dim, channels=(8, 4), kernel_sizes=(3, 2), init_identity=True)
        theta = jax.jit(lambda c: head.init_with_output(jax.random.key(5, impl="rbg"), c)[0])(corr)
        np.testing.assert_allclose(theta, np.tile(identity, (2, 1)), atol=0)
    # With identity heads, the stage-2 warp reproduces A (corner-aligned resampling on the same grid).
    a, _ = _images(4)
    warped = jax.vmap(lambda im: geometry.warp_affine(im, geometry.IDENTITY_AFFINE, 16, 16))(a)
    np.testing.assert_allclose(warped, a, atol=5e-5)
    # The model passes the option to both heads.
    params = init_matching_model(_tiny_model(init_identity=True), jax.random.PRNGKey(6))["params"]
    for head, identity in (("affine_regression", geometry.IDENTITY_AFFINE), ("tps_regression", geometry.IDENTITY_TPS)):
        np.testing.assert_array_equal(params[head]["linear"]["bias"], identity)
        np.testing.assert_array_equal(params[head]["linear"]["kernel"], 0.0)


def test_regression_head_nhwc_flatten_against_numpy():
    head = FeatureRegression(output_dim=6, channels=(3,), kernel_sizes=(2,))
    x = jax.random.normal(jax.random.PRNGKey(6), (1, 4, 4, 16))
    variables = jax.jit(head.init)(jax.random.key(7, impl="rbg"), x)
    out, state = jax.jit(lambda v: head.apply(v, x, mutable=["intermediates"]))(variables)
    conv_out = np.asarray(state["intermediates"]["conv_out"][0])  # (1, 3, 3, 3) after BN + ReLU
    kernel = np.asarray(variables["params"]["linear"]["kernel"])
    want = conv_out.reshape(1, -1) @ kernel + np.asarray(variables["params"]["linear"]["bias"])
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)


def test_valid_conv_against_numpy_loop():
    rng = np.random.default_rng(8)
    x = rng.normal(size=(2, 6, 5, 3)).astype(np.float32)
    kernel = rng.normal(size=(3, 3, 3, 4)).astype(np.float32)
    want = np.zeros((2, 4, 3, 4), np.float64)
    for y in range(4):
        for xx in range(3):
            want[:, y, xx] = np.einsum("bijc,ijcf->bf", x[:, y:y + 3, xx:xx + 3].astype(np.float64), kernel)
    np.testing.assert_allclose(valid_conv(jnp.asarray(x), jnp.asarray(kernel), "highest"), want, rtol=1e-5,
                               atol=1e-5)


def test_valid_conv_module_is_nn_conv_with_the_same_parameters():
    """Same parameter tree and init values as nn.Conv (checkpoints and torch imports), same outputs and gradients."""
    x = jax.random.normal(jax.random.PRNGKey(9), (2, 12, 12, 144))
    conv, ours = nn.Conv(16, (7, 7), padding="VALID", precision="highest"), ValidConv(16, 7, precision="highest")
    v_conv, v_ours = conv.init(jax.random.key(10), x), ours.init(jax.random.key(10), x)
    assert jax.tree.structure(v_conv) == jax.tree.structure(v_ours)
    jax.tree.map(np.testing.assert_array_equal, v_conv, v_ours)
    v_conv = jax.tree.map(lambda p: p + 0.1, v_conv)  # a non-zero bias

    def loss(module):
        return lambda v, x: jnp.sum(jnp.sin(module.apply(v, x)))
    grads_ours = jax.grad(loss(ours), argnums=(0, 1))(v_conv, x)
    grads_conv = jax.grad(loss(conv), argnums=(0, 1))(v_conv, x)
    jax.tree.map(lambda g, w: _close(g, w, 1e-5), grads_ours, grads_conv)
    _close(ours.apply(v_conv, x), conv.apply(v_conv, x), 1e-5)


def test_bad_inputs(tiny):
    model, variables = tiny
    good = jnp.zeros((1, 16, 16, 3))
    with pytest.raises(ValueError, match=r"image_a must be \(B, 16, 16, 3\)"):
        model.apply(variables, jnp.zeros((1, 20, 20, 3)), good)
    with pytest.raises(ValueError, match="image_b"):
        model.apply(variables, good, jnp.zeros((1, 16, 16)))
    with pytest.raises(ValueError, match="batch sizes differ"):
        model.apply(variables, good, jnp.zeros((2, 16, 16, 3)))
    with pytest.raises(ValueError, match="correlation"):
        model.apply(variables, jnp.zeros((15, 15, 225)), method=MatchingModel.regress_affine)
