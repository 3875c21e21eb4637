"""ResNet encoder: parity with the torchvision-layout reference (resnet_small.npz), shapes, BN modes, key layout."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_fixture

from macosnet_jax import weights
from macosnet_jax.models import resnet


def _nhwc(x):
    return np.transpose(x, (0, 2, 3, 1))


@pytest.fixture(scope="module")
def resnet_small():
    return load_fixture("resnet_small")


def test_resnet_small_parity(resnet_small):
    ref = resnet_small
    state = {k: v for k, v in ref.items() if "." in k}
    model, variables = weights.convert_torch_checkpoint(state, "torchvision_resnet")
    assert (model.depth, model.last_layer, model.width) == (101, "layer2", 64)  # 50 and 101 share layer1-2
    out = jax.jit(model.apply)(variables, jnp.asarray(_nhwc(ref["input"])))
    maxpool = resnet.max_pool_3x3_s2(out["stem"])
    for name, got in (("stem_out", out["stem"]), ("maxpool_out", maxpool), ("layer1_out", out["layer1"]),
                      ("layer2_out", out["layer2"])):
        want = _nhwc(ref[name])
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max(), err_msg=name)
    np.testing.assert_array_equal(out["features"], out["layer2"])


def test_maxpool_pads_with_minus_infinity():
    # All-negative input: a zero pad would win the max at the border; torch pads with -inf.
    x = -1.0 - jnp.arange(2 * 5 * 7, dtype=jnp.float32).reshape(1, 5, 7, 2)
    got = np.asarray(resnet.max_pool_3x3_s2(x))
    xp = np.pad(np.asarray(x), ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
    want = np.stack([np.stack([xp[:, 2 * i:2 * i + 3, 2 * j:2 * j + 3].max(axis=(1, 2)) for j in range(4)], 1)
                     for i in range(3)], 1)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("shape", [(2, 8, 10, 3), (1, 7, 5, 2), (3, 1, 2, 4)])
@pytest.mark.parametrize("values", ["normal", "ties"])
def test_maxpool_matches_flax_max_pool_and_its_gradient(shape, values):
    # Reference: nn.max_pool (reduce_window; its gradient is XLA's select-and-scatter: the first maximum of each
    # window in row-major order gets it). 'ties': small integers, so most windows hold several maxima, and odd
    # sizes, so the -inf pad ends the last window.
    rng = np.random.default_rng(sum(shape))
    x = rng.normal(size=shape) if values == "normal" else rng.integers(-2, 3, size=shape)
    x = jnp.asarray(x, jnp.float32)

    def plain(x):
        return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    want = plain(x)
    cotangent = jnp.asarray(rng.normal(size=want.shape), jnp.float32)
    np.testing.assert_array_equal(resnet.max_pool_3x3_s2(x), want)
    np.testing.assert_array_equal(jax.jit(resnet.max_pool_3x3_s2)(x), want)
    np.testing.assert_array_equal(jax.jit(lambda x: jax.vjp(resnet.max_pool_3x3_s2, x)[0])(x), want)  # fwd rule
    grad_want = jax.grad(lambda x: jnp.sum(plain(x) * cotangent))(x)
    grad_got = jax.jit(jax.grad(lambda x: jnp.sum(resnet.max_pool_3x3_s2(x) * cotangent)))(x)
    np.testing.assert_allclose(grad_got, grad_want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("depth,last_layer,width,channels", [
    (18, "layer3", 8, 32), (34, "layer2", 8, 16), (50, "layer4", 4, 128), (18, "stem", 8, 8)])
def test_shapes_and_channels(depth, last_layer, width, channels):
    model = resnet.ResNet(depth=depth, last_layer=last_layer, width=width)
    x = jnp.zeros((2, 32, 32, 3))
    shapes = jax.eval_shape(lambda: model.init_with_output(jax.random.PRNGKey(0), x))[0]
    strides = {"stem": 2, "layer1": 4, "layer2": 8, "layer3": 16, "layer4": 32}
    levels = resnet.LAYER_NAMES[:resnet.LAYER_NAMES.index(last_layer) + 1]
    assert set(shapes) == set(levels) | {"features"}
    for level in levels:
        assert shapes[level].shape[1:3] == (32 // strides[level],) * 2
    assert shapes["features"].shape[-1] == channels == resnet.output_channels(depth, last_layer, width)


def test_torchvision_key_layout_resnet101_and_50(fixtures_dir):
    """Our variables correspond one to one to torchvision's state_dict (fc and num_batches_tracked aside)."""
    text = (fixtures_dir / "torchvision_resnet_keys.txt").read_text().splitlines()
    tables, current = {}, None
    for line in text:
        if line.startswith("## "):
            current = line.split()[1]
            tables[current] = {}
        elif current and line and not line.startswith("#"):
            name, shape, _ = line.split("\t")
            tables[current][name] = tuple(int(s) for s in shape.split(",")) if shape else ()
    for arch, depth in (("resnet101", 101), ("resnet50", 50)):
        # Zero-size stand-ins with the right shapes: conversion checks names and shapes only.
        state = {k: np.zeros(s, np.int64 if k.endswith("num_batches_tracked") else np.float32)
                 for k, s in tables[arch].items()}
        assert weights.infer_resnet_config(state) == (depth, "layer4", 64)
        model, variables = weights.convert_torch_checkpoint(state, "torchvision_resnet")
        n_params = sum(v.size for v in jax.tree_util.tree_leaves(variables["params"]))
        n_torch = sum(np.prod(s) for k, s in tables[arch].items()
                      if not k.startswith("fc.") and not k.endswith(("running_mean", "running_var",
                                                                     "num_batches_tracked")))
        assert n_params == n_torch
        # Truncation drops later layers on purpose.
        _, trunc = weights.convert_torch_checkpoint(state, "torchvision_resnet", last_layer="layer3")
        assert "layer4_0" not in trunc["params"] and "layer3_0" in trunc["params"]


def test_batch_norm_modes():
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 32, 3))
    frozen = resnet.ResNet(depth=18, last_layer="layer1", width=8)
    variables = jax.jit(frozen.init)(jax.random.key(0, impl="rbg"), x)  # rbg: threefry compiles slowly on CPU
    a = jax.jit(lambda v: frozen.apply(v, x, train=True))(variables)["features"]  # frozen BN: train == eval
    b = jax.jit(lambda v: frozen.apply(v, x, train=False))(variables)["features"]
    np.testing.assert_array_equal(a, b)
    live = resnet.ResNet(depth=18, last_layer="layer1", width=8, update_batch_stats=True)
    out, state = jax.jit(lambda v: live.apply(v, x, train=True, mutable=["batch_stats", "intermediates"],
                                              capture_intermediates=True))(variables)
    assert not np.allclose(out["features"], b)
    # torch momentum 0.1: new running mean = 0.9 * old (0) + 0.1 * batch mean.
    batch_mean = np.asarray(state["intermediates"]["conv1"]["__call__"][0]).mean((0, 1, 2))
    np.testing.assert_allclose(state["batch_stats"]["bn1"]["mean"], 0.1 * batch_mean, rtol=1e-4, atol=1e-6)


def test_global_pool_and_bad_input():
    x = jnp.arange(24.0).reshape(1, 2, 4, 3)
    np.testing.assert_allclose(resnet.global_pool_features(x), x.mean((1, 2)))
    model = resnet.ResNet(depth=18, last_layer="layer1", width=8)
    with pytest.raises(ValueError, match=r"\(B, H, W, 3\)"):
        model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32)))
    with pytest.raises(ValueError, match="depth"):
        resnet.ResNet(depth=20).init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))


def assert_same_as_nn_conv(ours, conv, x, key, grad_rtol=1e-5):
    """`ours` has `conv`'s parameter tree and init, and gives its outputs and gradients (parameters and input)."""
    v_conv, v_ours = conv.init(key, x), ours.init(key, x)
    assert jax.tree.structure(v_conv) == jax.tree.structure(v_ours)
    jax.tree.map(np.testing.assert_array_equal, v_conv, v_ours)
    np.testing.assert_allclose(ours.apply(v_conv, x), conv.apply(v_conv, x), rtol=1e-5, atol=1e-5)

    def loss(module):
        return lambda v, x: jnp.sum(jnp.sin(module.apply(v, x)))
    got = jax.jit(jax.grad(loss(ours), argnums=(0, 1)))(v_conv, x)
    want = jax.jit(jax.grad(loss(conv), argnums=(0, 1)))(v_conv, x)
    jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=grad_rtol, atol=1e-5), got, want)


@pytest.mark.parametrize("stride, size", [(1, 6), (2, 7), (2, 8)])
def test_conv1x1_is_nn_conv_with_the_same_parameters(stride, size):
    """Same parameter tree and init as nn.Conv(1x1, stride, pad 0), same outputs and gradients (odd sizes too)."""
    x = jax.random.normal(jax.random.PRNGKey(11), (2, size, size + 1, 5))
    conv = nn.Conv(3, (1, 1), strides=(stride, stride), padding=((0, 0), (0, 0)), use_bias=False,
                   precision="highest")
    assert_same_as_nn_conv(resnet.Conv1x1(3, stride, precision="highest"), conv, x, jax.random.key(12))


@pytest.mark.parametrize("kernel_size, size", [(7, 16), (7, 13), (3, 9), (5, 10)])
def test_stem_conv_is_nn_conv_with_the_same_parameters(kernel_size, size):
    """StemConv: nn.Conv(k, stride 2, pad k // 2)'s parameter tree and init, outputs, and both gradients (its input
    gradient is computed on 2x2 blocks: odd sizes and kernels whose size is not a multiple of 2 included)."""
    x = jax.random.normal(jax.random.PRNGKey(13), (2, size, size + 3, 3))
    pad = kernel_size // 2
    conv = nn.Conv(4, (kernel_size, kernel_size), strides=(2, 2), padding=((pad, pad), (pad, pad)), use_bias=False,
                   precision="highest")
    assert_same_as_nn_conv(resnet.StemConv(4, kernel_size, precision="highest"), conv, x, jax.random.key(14),
                           grad_rtol=1e-4)


class _ConvBN(nn.Module):
    """conv_bn as a module (frozen BatchNorm), or the plain conv -> nn.BatchNorm it replaces."""
    kernel: int
    stride: int
    plain: bool = False

    @nn.compact
    def __call__(self, x):
        if self.plain:
            conv = (resnet.Conv1x1(3, self.stride, precision="highest", name="conv") if self.kernel == 1 else
                    nn.Conv(3, (self.kernel, self.kernel), strides=self.stride, padding=self.kernel // 2,
                            use_bias=False, precision="highest", name="conv"))
            return nn.BatchNorm(use_running_average=True, epsilon=resnet.BN_EPSILON, name="bn")(conv(x))
        return resnet.conv_bn(x, 3, self.kernel, self.stride, True, "highest", "conv", "bn")


def _random_like(tree, key, low, high):
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, len(leaves))
    return treedef.unflatten([jax.random.uniform(k, v.shape, v.dtype, low, high) for k, v in zip(keys, leaves)])


def _random_batch_stats(batch_stats, key):
    """Running means in [-0.3, 0.3] and variances in [0.5, 1.5] (most ReLUs stay alive)."""
    paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(batch_stats)
    keys = jax.random.split(key, len(paths_leaves))
    return treedef.unflatten([
        jax.random.uniform(k, v.shape, v.dtype, *((-0.3, 0.3) if path[-1].key == "mean" else (0.5, 1.5)))
        for k, (path, v) in zip(keys, paths_leaves)])


@pytest.mark.parametrize("kernel, stride, size", [(1, 1, 6), (1, 2, 7), (3, 1, 6), (3, 2, 7), (3, 2, 8)])
def test_conv_frozen_bn_is_conv_then_batchnorm(kernel, stride, size):
    """conv_bn with frozen BatchNorm: the plain conv -> nn.BatchNorm's variables, outputs and gradients (input,
    kernel, BN scale and bias, and the running mean) with random BN statistics and affine parameters."""
    x = jax.random.normal(jax.random.PRNGKey(21), (2, size, size + 1, 5))
    ours, plain = _ConvBN(kernel, stride), _ConvBN(kernel, stride, plain=True)
    v_plain, v_ours = plain.init(jax.random.key(22), x), ours.init(jax.random.key(22), x)
    assert jax.tree.structure(v_plain) == jax.tree.structure(v_ours)
    jax.tree.map(np.testing.assert_array_equal, v_plain, v_ours)
    variables = {"params": dict(v_plain["params"], bn=_random_like(v_plain["params"]["bn"], jax.random.key(23),
                                                                    -1.5, 1.5)),
                 "batch_stats": _random_batch_stats(v_plain["batch_stats"], jax.random.key(24))}
    np.testing.assert_allclose(ours.apply(variables, x), plain.apply(variables, x), rtol=1e-5, atol=1e-5)

    def loss(module):
        return lambda v, x: jnp.sum(jnp.sin(3.0 * module.apply(v, x)))
    got = jax.jit(jax.grad(loss(ours), argnums=(0, 1)))(variables, x)
    want = jax.jit(jax.grad(loss(plain), argnums=(0, 1)))(variables, x)
    jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4), got, want)
    assert float(jnp.abs(got[0]["batch_stats"]["bn"]["mean"]).max()) > 0.1  # the mean's gradient is compared


@pytest.mark.parametrize("depth", [18, 50])
def test_resnet_frozen_bn_form_matches_the_plain_form(depth, monkeypatch):
    """The whole encoder with frozen BatchNorm: gradients (parameters and input) as with conv -> nn.BatchNorm."""
    model = resnet.ResNet(depth=depth, last_layer="layer2", width=8, precision="highest")
    x = jax.random.normal(jax.random.PRNGKey(25), (2, 32, 32, 3))
    variables = model.init(jax.random.key(26), x)
    variables = {"params": variables["params"],
                 "batch_stats": _random_batch_stats(variables["batch_stats"], jax.random.key(27))}

    def grads():
        def loss(params, x):
            out = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x)["features"]
            return jnp.sum(jnp.sin(out))
        return jax.jit(jax.grad(loss, argnums=(0, 1)))(variables["params"], x)
    got = grads()

    def plain_conv_bn(x, features, kernel, stride, use_running_average, precision, conv_name, bn_name):
        conv = resnet._conv(features, kernel, stride, conv_name, precision)
        return resnet._bn(use_running_average, bn_name)(conv(x))
    monkeypatch.setattr(resnet, "conv_bn", plain_conv_bn)
    want = grads()
    scale = max(float(jnp.abs(w).max()) for w in jax.tree.leaves(want))
    jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5 * scale), got, want)
    for leaf in jax.tree.leaves(want[0]["layer1_0"]):  # gradients reach the first block (ReLUs alive)
        assert float(jnp.abs(leaf).max()) > 1e-3 * scale


def test_materialized_block_outputs_change_no_value(monkeypatch):
    """Dividing block outputs by the runtime 1.0 keeps outputs and gradients bit for bit (resnet.materialized)."""
    kernel = jax.random.normal(jax.random.key(30), (7, 7, 3, 8)) * 1e3
    assert float(resnet.runtime_one(kernel)) == 1.0
    model = resnet.ResNet(depth=18, last_layer="layer2", width=8)
    x = jax.random.normal(jax.random.PRNGKey(31), (2, 32, 32, 3))
    variables = model.init(jax.random.key(32), x)

    def run():
        def loss(params, x):
            return jnp.sum(jnp.sin(model.apply({"params": params, "batch_stats": variables["batch_stats"]},
                                               x)["features"]))
        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(variables["params"], x)
    got = run()
    monkeypatch.setattr(resnet, "materialized", lambda x, one: x)
    jax.tree.map(np.testing.assert_array_equal, got, run())
