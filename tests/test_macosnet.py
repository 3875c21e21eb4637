"""Tests of the joint MaCoSNet model on a tiny configuration (ResNet-18, width 8, 32x32 images cut at layer2,
so the decoder has three stages): variables layout, agreement with MatchingModel for every direction, the
encoder-pass counts, and that the full objective's gradients reach the decoder, both regressors and the
encoder but not the frozen perceptual network."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from macosnet_jax import losses
from macosnet_jax.models import macosnet as M
from macosnet_jax.models.matching import MatchingModel
from macosnet_jax.models.resnet import ResNet

CONFIG = dict(depth=18, last_layer="layer2", width=8, image_size=32, regression_channels=(8, 8),
              regression_kernels=(3, 2), init_identity=True)
B = 2


@pytest.fixture(scope="module")
def setup():
    model = M.build_macosnet(**CONFIG)
    # 'rbg' keys: threefry's unrolled rounds make the init's compile 10x slower on CPU.
    variables = M.init_macosnet(model, jax.random.key(0, impl="rbg"), B)

    @jax.jit
    def perturb(params, key):
        # Moves the identity-initialised heads off the identity so the maps differ between directions.
        leaves, treedef = jax.tree_util.tree_flatten(params)
        keys = jax.random.split(key, len(leaves))
        return jax.tree_util.tree_unflatten(
            treedef, [x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])

    variables = {**variables, "params": perturb(variables["params"], jax.random.key(1, impl="rbg"))}
    rng = np.random.default_rng(0)
    images = [jnp.asarray(rng.normal(size=(B, 32, 32, 3)).astype(np.float32)) for _ in range(3)]
    return model, variables, images


def test_variables_layout_accepts_matching_model_trees(setup):
    model, variables, _ = setup
    assert set(variables["params"]) == {"matching", "decoder"}
    assert set(variables["batch_stats"]) == {"matching", "decoder"}
    matching = MatchingModel(**{k: v for k, v in CONFIG.items()})
    shapes = jax.eval_shape(functools.partial(matching.init, train=False), jax.random.PRNGKey(0),
                            jnp.zeros((1, 32, 32, 3)), jnp.zeros((1, 32, 32, 3)))
    for collection in ("params", "batch_stats"):
        ours = jax.tree_util.tree_map(lambda x: x.shape, variables[collection]["matching"])
        theirs = jax.tree_util.tree_map(lambda x: x.shape, shapes[collection])
        assert ours == theirs
    replaced = M.with_matching_variables(variables, {"params": variables["params"]["matching"]})
    assert replaced["params"]["decoder"] is variables["params"]["decoder"]
    with pytest.raises(KeyError, match="collections"):
        M.with_matching_variables(variables, {"cache": {}})


def test_outputs_agree_with_matching_model_in_every_direction(setup):
    model, variables, (a, b, c) = setup
    matching = MatchingModel(**CONFIG)
    mvars = {k: v["matching"] for k, v in variables.items()}

    @jax.jit
    def run(a, b, c):
        trip = model.apply(variables, a, b, c, train=False, method=M.MaCoSNet.triplet)
        pred = model.apply(variables, a, b, method=M.MaCoSNet.predict)
        direct = {d: matching.apply(mvars, x, y, train=False)
                  for d, (x, y) in {"ab": (a, b), "ba": (b, a), "bc": (b, c), "ca": (c, a)}.items()}
        return trip, pred, {d: (o["theta_aff"], o["theta_tps"], o["corr_1"]) for d, o in direct.items()}

    trip, pred, direct = run(a, b, c)
    for d, (aff, tps, corr_1) in direct.items():
        np.testing.assert_allclose(trip["theta_aff"][d], aff, atol=1e-5)
        np.testing.assert_allclose(trip["theta_tps"][d], tps, atol=1e-5)
        if d in ("ab", "ba"):  # C_BA from the swapped C_AB equals the directly computed one
            np.testing.assert_allclose(trip["corr"][d], corr_1, atol=1e-5)
    assert np.abs(np.asarray(trip["theta_aff"]["ab"] - trip["theta_aff"]["ba"])).max() > 1e-4
    np.testing.assert_allclose(pred["theta_aff"], direct["ab"][0], atol=1e-5)
    np.testing.assert_allclose(pred["theta_tps"], direct["ab"][1], atol=1e-5)
    for k in "ab":
        np.testing.assert_allclose(pred[f"mask_logits_{k}"], trip["mask_logits"][k], atol=1e-5)
        assert pred[f"mask_{k}"].shape == (B, 32, 32)
        np.testing.assert_allclose(pred[f"mask_{k}"], jax.nn.sigmoid(pred[f"mask_logits_{k}"]), atol=1e-6)


def _count_encoder_passes(model, variables, method, *images, **kwargs):
    """Images through the ResNet, counted at trace time (eval_shape: nothing is compiled)."""
    seen = []

    def interceptor(next_fun, args, kw, context):
        if isinstance(context.module, ResNet) and context.method_name == "__call__":
            seen.append(args[0].shape[0])
        return next_fun(*args, **kw)

    with nn.intercept_methods(interceptor):
        jax.eval_shape(lambda v, *x: model.apply(v, *x, method=method, **kwargs), variables, *images)
    return sum(seen) // B, len(seen)


def test_encoder_passes_per_step(setup):
    model, variables, (a, b, c) = setup
    assert _count_encoder_passes(model, variables, M.MaCoSNet.triplet, a, b, c, train=False) == (7, 2)
    assert _count_encoder_passes(model, variables, M.MaCoSNet.pair, a, b, train=False) == (4, 2)
    assert _count_encoder_passes(model, variables, M.MaCoSNet.predict, a, b) == (3, 2)
    assert M.ENCODER_PASSES == {"triplet": 7, "pair": 4, "predict": 3}
    assert M.REFERENCE_ENCODER_PASSES_PER_TRIPLET == 9


def test_gradients_reach_decoder_and_regressors_not_frozen_net(setup):
    model, variables, (a, b, _) = setup
    perceptual = ResNet(depth=18, last_layer="layer1", width=8)
    p_vars = jax.jit(perceptual.init)(jax.random.key(5, impl="rbg"), a)

    def objective(params, p_vars):
        frozen = jax.lax.stop_gradient(p_vars)
        descriptor = lambda x: jnp.mean(perceptual.apply(frozen, x)["features"], axis=(1, 2))  # noqa: E731
        # Pair outputs keep the compile small; the transitivity gradient is checked in test_losses.
        outputs, updates = model.apply({**variables, "params": params}, a, b, train=True,
                                       method=M.MaCoSNet.pair, mutable=["batch_stats"])
        weights = {**losses.DEFAULT_WEIGHTS, "transitivity": 0.0}
        loss, terms = losses.total_loss(outputs, weights, images={"a": a, "b": b}, descriptor_fn=descriptor)
        return loss, (terms, updates)

    (loss, (terms, updates)), (g_model, g_perc) = jax.jit(
        jax.value_and_grad(objective, argnums=(0, 1), has_aux=True))(variables["params"], p_vars)
    assert np.isfinite(float(loss)) and all(np.isfinite(float(v)) for v in terms.values())

    def norm(tree):
        return float(jnp.sqrt(sum(jnp.sum(x ** 2) for x in jax.tree_util.tree_leaves(tree))))

    assert norm(g_model["decoder"]) > 0
    assert norm(g_model["matching"]["affine_regression"]) > 0
    assert norm(g_model["matching"]["tps_regression"]) > 0
    assert norm(g_model["matching"]["encoder"]) > 0
    assert norm(g_perc) == 0.0
    # Training mode: the decoder's BN statistics move, the encoder's stay frozen (SPEC §2).
    assert norm(jax.tree_util.tree_map(jnp.subtract, updates["batch_stats"]["decoder"],
                                       variables["batch_stats"]["decoder"])) > 0
    assert norm(jax.tree_util.tree_map(jnp.subtract, updates["batch_stats"]["matching"]["encoder"],
                                       variables["batch_stats"]["matching"]["encoder"])) == 0


def test_bad_image_shape_is_a_clear_error(setup):
    model, variables, (a, b, _) = setup
    with pytest.raises(ValueError, match="image_size=32"):
        jax.eval_shape(lambda v: model.apply(v, a[:, :16], b, method=M.MaCoSNet.predict), variables)
