"""DINOv2 ViT against the fixtures of tests/fixtures/dinov2 (a tiny random ViT with the official names, made by
an independent torch implementation checked against the official classes): 1e-5 absolute in float32."""
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from macosnet_jax import weights
from macosnet_jax.weights import dinov2 as dinov2_weights
from macosnet_jax.models import dinov2 as dv

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "dinov2"
CASES = ("native", "interp", "batch", "down")
ATOL = 1e-5


@pytest.fixture(scope="module")
def data():
    with np.load(FIXTURES / "vit_tiny.npz") as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def loaded():
    return weights.load_dinov2(FIXTURES / "vit_tiny.pth")


def _nhwc(x):
    return jnp.asarray(np.transpose(x, (0, 2, 3, 1)))


def _err(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)))) if np.size(b) else 0.0


def test_inferred_config(loaded):
    model, variables = loaded
    assert (model.embed_dim, model.depth, model.num_heads, model.num_registers, model.pos_grid) == (48, 3, 3, 0, 7)
    assert (model.interpolate_offset, model.interpolate_antialias, model.ffn) == (0.1, False, "mlp")
    assert sum(x.size for x in jax.tree_util.tree_leaves(variables)) == 115968


@pytest.mark.parametrize("case", CASES)
def test_forward_features(case, loaded, data):
    model, variables = loaded
    x = _nhwc(data[f"{case}_x"])
    out = jax.jit(model.apply)(variables, x)
    b, h, w = x.shape[0], x.shape[1] // 14, x.shape[2] // 14
    assert out["x_norm_patchtokens"].shape == (b, h * w, 48)
    for key in ("x_norm_clstoken", "x_norm_regtokens", "x_norm_patchtokens", "x_prenorm"):
        assert out[key].shape == data[f"{case}_{key}"].shape
        assert _err(out[key], data[f"{case}_{key}"]) < ATOL, key
    np.testing.assert_array_equal(out["feature_map"], np.asarray(out["x_norm_patchtokens"]).reshape(b, h, w, 48))
    tokens = model.apply(variables, x, method=model.prepare_tokens)
    assert _err(tokens, data[f"{case}_tokens"]) < ATOL
    pos = dv.interpolate_pos_embed(variables["params"]["pos_embed"], x.shape[1], x.shape[2])
    assert _err(pos, data[f"{case}_pos_embed_interp"]) < ATOL
    if case == "native":  # the native size skips the interpolation: the table itself, bit for bit
        np.testing.assert_array_equal(pos, data["pos_embed"])


def test_masked_forward(loaded, data):
    model, variables = loaded
    x, masks = _nhwc(data["native_x"]), jnp.asarray(data["native_masks"])
    assert _err(model.apply(variables, x, masks, method=model.prepare_tokens), data["native_masked_tokens"]) < ATOL
    out = model.apply(variables, x, masks)
    for key in ("x_norm_clstoken", "x_norm_patchtokens", "x_prenorm"):
        assert _err(out[key], data[f"native_masked_{key}"]) < ATOL, key


@pytest.mark.parametrize("case", CASES)
def test_intermediate_layers(case, loaded, data):
    model, variables = loaded
    x = _nhwc(data[f"{case}_x"])
    gil = lambda **kw: model.apply(variables, x, method=model.get_intermediate_layers, **kw)
    n2 = gil(n=2, reshape=True, return_class_token=True)
    layers = [int(i) for i in data[f"{case}_gil_list_layers"]]
    listed = gil(n=layers[::-1], reshape=True, return_class_token=True)  # block order whatever the list order
    for got, prefix in ((n2, "gil_n2"), (listed, "gil_list")):
        assert len(got) == data[f"{case}_{prefix}_patch"].shape[0]
        for k, (patch, cls) in enumerate(got):
            assert _err(np.transpose(patch, (0, 3, 1, 2)), data[f"{case}_{prefix}_patch"][k]) < ATOL
            assert _err(cls, data[f"{case}_{prefix}_cls"][k]) < ATOL
    (raw,) = gil(n=1, reshape=False, return_class_token=False, norm=False)
    assert _err(raw, data[f"{case}_gil_n1_raw"]) < ATOL


def test_pos_interp_both_variants():
    with np.load(FIXTURES / "pos_interp.npz") as f:
        ref = {k: f[k] for k in f.files}
    grid = ref["grid"][0]  # (C, 7, 7)
    for h, w in ref["targets"]:
        noaa = np.einsum("hm,cmn,wn->chw", dv.bicubic_matrix(7, h, 0.1), grid, dv.bicubic_matrix(7, w, 0.1))
        assert _err(noaa, ref[f"off01_noaa_{h}x{w}"][0]) < ATOL
        aa = jax.image.resize(jnp.asarray(grid), (grid.shape[0], h, w), "cubic", antialias=True)
        assert _err(aa, ref[f"size_aa_{h}x{w}"][0]) < ATOL
        # through the model function (channels last, cls row first): the register models' size call
        table = np.concatenate([np.zeros((1, 1, 6)), grid.reshape(6, 49).T[None]], axis=1).astype(np.float32)
        if (h, w) != (7, 7):
            pos = dv.interpolate_pos_embed(jnp.asarray(table), 14 * h, 14 * w, offset=0.0, antialias=True)
            assert _err(np.asarray(pos)[0, 1:].T.reshape(6, h, w), ref[f"size_aa_{h}x{w}"][0]) < ATOL


def _vits14_keys():
    rows = []
    for line in (FIXTURES / "dinov2_vits14_keys.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, shape, dtype = line.split("\t")
            rows.append((name, tuple(int(s) for s in shape.strip("()").split(",") if s.strip()), dtype))
    return rows


def test_zero_filled_vits14_loads():
    rows = _vits14_keys()
    assert len(rows) == 175
    state = {name: np.zeros(shape, np.float32) for name, shape, _ in rows}
    model, variables = weights.load_dinov2(state)
    assert (model.embed_dim, model.depth, model.num_heads, model.num_registers, model.pos_grid) == (384, 12, 6, 0, 37)
    flat = jax.tree_util.tree_leaves_with_path(variables)
    assert len(flat) == 175 and all(not np.any(np.asarray(v)) for _, v in flat)
    reg = dict(state, register_tokens=np.zeros((1, 4, 384), np.float32))
    model_reg, variables_reg = weights.load_dinov2(reg)
    assert (model_reg.num_registers, model_reg.interpolate_offset, model_reg.interpolate_antialias) == (4, 0.0, True)
    out = jax.jit(model_reg.apply)(variables_reg, jnp.zeros((1, 28, 42, 3)))
    assert out["x_norm_regtokens"].shape == (1, 4, 384) and out["x_prenorm"].shape == (1, 1 + 4 + 6, 384)


def test_strict_import_lists_misfits():
    state = {name: np.zeros(shape, np.float32) for name, shape, _ in _vits14_keys()}
    del state["blocks.3.ls2.gamma"]
    state["blocks.0.attn.qkv.bias"] = np.zeros((1000,), np.float32)
    state["head.weight"] = np.zeros((3, 384), np.float32)
    with pytest.raises(ValueError) as err:
        weights.load_dinov2(state)
    text = str(err.value)
    assert "blocks.3.ls2.gamma" in text and "head.weight" in text and "blocks.0.attn.qkv.bias" in text


def test_npz_and_pth_agree(data):
    _, from_pth = weights.load_dinov2(FIXTURES / "vit_tiny.pth")
    _, from_npz = weights.load_dinov2(FIXTURES / "vit_tiny.npz")
    jax.tree_util.tree_map(np.testing.assert_array_equal, from_pth, from_npz)
    assert dinov2_weights.torch_name(("params", "blocks_2", "mlp", "fc1", "kernel")) == "blocks.2.mlp.fc1.weight"


def test_random_sizes_build():
    for size, dim in (("tiny", 48), ("small", 384)):
        model = dv.dinov2(size, num_registers=4, pos_grid=4)
        shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((2, 56, 70, 3)))
        out = jax.eval_shape(model.apply, shapes, jnp.zeros((2, 56, 70, 3)))
        assert out["feature_map"].shape == (2, 4, 5, dim) and out["x_norm_regtokens"].shape == (2, 4, dim)
    giant = jax.eval_shape(dv.dinov2("giant", pos_grid=2).init, jax.random.key(0), jnp.zeros((1, 28, 28, 3)))
    assert giant["params"]["blocks_0"]["mlp"]["w12"]["kernel"].shape == (1536, 2 * 4096)
