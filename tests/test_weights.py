"""Torch checkpoint reading (legacy + zip + npz, no torch) and conversion to Flax variables (strict)."""
import argparse
import collections
import io
import pickle
import sys
import types
import zipfile

import jax
import ml_dtypes
import numpy as np
import pytest
from conftest import FIXTURES, load_fixture

from macosnet_jax import weights
from macosnet_jax.models.matching import MatchingModel
from macosnet_jax.models.regression import identity_theta

LEGACY = FIXTURES / "model_small_weakalign_legacy.pth.tar"


@pytest.fixture(scope="module")
def model_small_state():
    return collections.OrderedDict((k, v) for k, v in load_fixture("model_small").items() if "." in k)


# ---------------------------------------------------------------------------------------------------------------
# Reading.


def test_legacy_pth_tar_equals_npz_state_dict(model_small_state):
    state = weights.load_torch_state_dict(LEGACY)
    assert list(state) == list(model_small_state)  # same names, same order
    for name, value in model_small_state.items():
        assert state[name].dtype == value.dtype and state[name].shape == value.shape, name
        np.testing.assert_array_equal(state[name], value, err_msg=name)
    checkpoint = weights.load_torch_file(LEGACY)
    assert checkpoint["epoch"] == 3 and isinstance(checkpoint["args"], argparse.Namespace)
    assert checkpoint["args"].feature_extraction_cnn == "resnet101"


def test_npz_reader_skips_non_torch_names():
    state = weights.load_torch_state_dict(FIXTURES / "model_small.npz")
    assert len(state) == 98 and "theta_aff" not in state


class _FakeStorage:
    def __init__(self, array):
        self.array = array


def _write_torch_zip(path, obj, monkeypatch):
    """Writes `obj` in torch's zip format with an independent writer (fake torch modules for the globals)."""
    torch_mod, utils_mod = types.ModuleType("torch"), types.ModuleType("torch._utils")
    storage_classes = {}
    for name in ("FloatStorage", "LongStorage", "BFloat16Storage", "HalfStorage"):
        storage_classes[name] = type(name, (), {"__module__": "torch"})
        setattr(torch_mod, name, storage_classes[name])

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called while writing")
    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils_mod._rebuild_tensor_v2 = _rebuild_tensor_v2
    torch_mod._utils = utils_mod
    monkeypatch.setitem(sys.modules, "torch", torch_mod)
    monkeypatch.setitem(sys.modules, "torch._utils", utils_mod)

    class Tensor:
        def __init__(self, storage, offset, size, stride):
            self.args = (storage, offset, size, stride, False, collections.OrderedDict())

        def __reduce__(self):
            return (_rebuild_tensor_v2, self.args)

    storages = []

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, _FakeStorage):
                kind = {np.dtype(np.float32): "FloatStorage", np.dtype(np.int64): "LongStorage",
                        np.dtype(np.float16): "HalfStorage"}.get(obj.array.dtype, "BFloat16Storage")
                key = str(storages.index(obj))
                return ("storage", storage_classes[kind], key, "cpu", obj.array.size)
            return None

    def convert(value):
        if isinstance(value, tuple) and len(value) == 4:  # (flat array, offset, size, stride)
            storage = _FakeStorage(value[0])
            storages.append(storage)
            return Tensor(storage, *value[1:])
        if isinstance(value, dict):
            return collections.OrderedDict((k, convert(v)) for k, v in value.items())
        return value

    converted = convert(obj)
    buffer = io.BytesIO()
    Pickler(buffer, protocol=2).dump(converted)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", buffer.getvalue())
        archive.writestr("archive/byteorder", "little")
        archive.writestr("archive/version", "3\n")
        for i, storage in enumerate(storages):
            archive.writestr(f"archive/data/{i}", storage.array.tobytes())


def test_zip_format_strides_offsets_dtypes_and_wrappers(tmp_path, monkeypatch):
    flat = np.arange(24, dtype=np.float32)
    half = (np.arange(6) / 4).astype(np.float16)
    bf16 = np.array([1.5, -2.0, 3.25], dtype=ml_dtypes.bfloat16)
    obj = {"epoch": 7, "model": {
        "module.a.weight": (flat, 0, (2, 3, 4), (12, 4, 1)),
        "module.a.transposed": (flat, 2, (3, 2), (1, 4)),  # non-contiguous view with a storage offset
        "module.b.count": (np.array([5], np.int64), 0, (), ()),
        "module.c.half": (half, 0, (2, 3), (3, 1)),
        "module.d.bf16": (bf16, 0, (3,), (1,)),
    }}
    path = tmp_path / "ckpt.pth"
    _write_torch_zip(path, obj, monkeypatch)
    monkeypatch.delitem(sys.modules, "torch")
    monkeypatch.delitem(sys.modules, "torch._utils")
    state = weights.load_torch_state_dict(path)
    assert list(state) == ["a.weight", "a.transposed", "b.count", "c.half", "d.bf16"]
    np.testing.assert_array_equal(state["a.weight"], flat.reshape(2, 3, 4))
    np.testing.assert_array_equal(state["a.transposed"], np.lib.stride_tricks.as_strided(
        flat[2:], (3, 2), (4, 16)))
    assert state["b.count"].shape == () and state["b.count"] == 5 and state["b.count"].dtype == np.int64
    np.testing.assert_array_equal(state["c.half"], half.reshape(2, 3))
    assert state["d.bf16"].dtype == np.float32
    np.testing.assert_array_equal(state["d.bf16"], [1.5, -2.0, 3.25])


def test_refuses_foreign_globals(tmp_path):
    class Evil:
        def __reduce__(self):
            import os
            return (os.system, ("echo should-not-run",))
    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"state_dict": Evil()}, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="refusing to unpickle global"):
        weights.load_torch_state_dict(path)


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "junk.pth"
    path.write_bytes(b"hello world, not a pickle")
    with pytest.raises(ValueError, match="junk.pth"):
        weights.load_torch_state_dict(path)
    with pytest.raises(FileNotFoundError):
        weights.load_torch_state_dict(tmp_path / "absent.pth")


# ---------------------------------------------------------------------------------------------------------------
# Conversion.


def test_linear_flatten_permutation_against_numpy():
    rng = np.random.default_rng(0)
    c, h, w, d = 4, 3, 3, 5
    x_chw = rng.normal(size=(c, h, w)).astype(np.float32)
    weight = rng.normal(size=(d, c * h * w)).astype(np.float32)
    # Both products in float64: the kernel is a permutation of the weights (exact), so the comparison checks the
    # flatten order only. In float32 the two 36-term dot products round in BLAS's CPU-dependent summation order,
    # with a worst-case relative error (36·2⁻²⁴·Σ|w·x|/|out|, up to 1.8e-5 here) above rtol.
    torch_out = weight.astype(np.float64) @ x_chw.reshape(-1).astype(np.float64)  # torch: flatten (C, H, W)
    kernel = weights.convert._torch_flatten_linear_to_flax(weight, c)
    flax_out = np.transpose(x_chw, (1, 2, 0)).reshape(-1).astype(np.float64) @ np.asarray(kernel, np.float64)
    np.testing.assert_allclose(flax_out, torch_out, rtol=1e-5)


def test_legacy_and_npz_give_identical_variables(model_small_state):
    model, from_npz = weights.convert_torch_checkpoint(model_small_state, "weakalign", image_size=60)
    assert (model.depth, model.last_layer, model.width, model.image_size) == (101, "layer1", 64, 60)
    from_legacy = weights.load_torch_checkpoint(LEGACY, "weakalign", image_size=60)
    assert jax.tree_util.tree_structure(from_npz) == jax.tree_util.tree_structure(from_legacy)
    jax.tree_util.tree_map(np.testing.assert_array_equal, from_npz, from_legacy)
    # Every variable the model has is filled, with the model's shapes.
    abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), np.zeros((1, 60, 60, 3)),
                                                 np.zeros((1, 60, 60, 3))))
    assert jax.tree_util.tree_map(lambda a: a.shape, abstract) == jax.tree_util.tree_map(np.shape, from_npz)
    # Spot checks of each transform.
    np.testing.assert_array_equal(from_npz["params"]["encoder"]["conv1"]["kernel"],
                                  model_small_state["FeatureExtraction.model.0.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(from_npz["batch_stats"]["encoder"]["layer1_0"]["downsample_bn"]["var"],
                                  model_small_state["FeatureExtraction.model.4.0.downsample.1.running_var"])
    np.testing.assert_array_equal(from_npz["params"]["tps_regression"]["bn1"]["scale"],
                                  model_small_state["FeatureRegression2.conv.4.weight"])


def test_strict_missing_unexpected_misshaped(model_small_state):
    state = dict(model_small_state)
    del state["FeatureRegression.conv.1.running_var"]
    state["FeatureRegression.extra.weight"] = np.zeros(3, np.float32)
    state["FeatureExtraction.model.4.1.conv2.weight"] = np.zeros((64, 64, 1, 1), np.float32)
    with pytest.raises(ValueError) as info:
        weights.load_torch_checkpoint(state, "weakalign", image_size=60)
    message = str(info.value)
    assert "missing (1): ['FeatureRegression.conv.1.running_var']" in message
    assert "unexpected (1): ['FeatureRegression.extra.weight']" in message
    assert "mis-shaped (1): ['FeatureExtraction.model.4.1.conv2.weight" in message
    # num_batches_tracked may be absent (old torchvision) or present.
    trimmed = {k: v for k, v in model_small_state.items() if not k.endswith("num_batches_tracked")}
    weights.load_torch_checkpoint(trimmed, "weakalign", image_size=60)
    # A wrong image size changes the correlation channels: reported as mis-shaped regression convs.
    with pytest.raises(ValueError, match="FeatureRegression.conv.0.weight"):
        weights.load_torch_checkpoint(model_small_state, "weakalign", image_size=64)


def test_layout_errors(model_small_state):
    with pytest.raises(ValueError, match="unknown checkpoint layout"):
        weights.load_torch_checkpoint(model_small_state, "vgg")
    affine_only = {k: v for k, v in model_small_state.items() if not k.startswith("FeatureRegression2.")}
    with pytest.raises(ValueError, match="affine .* and a TPS"):
        weights.load_torch_checkpoint(affine_only, "weakalign", image_size=60)


def test_cnngeo_single_head_gets_identity_partner(model_small_state):
    affine_only = {k: v for k, v in model_small_state.items() if not k.startswith("FeatureRegression2.")}
    model, variables = weights.convert_torch_checkpoint(affine_only, "cnngeo", image_size=60)
    corr = np.abs(np.random.default_rng(0).normal(size=(2, 15, 15, 225))).astype(np.float32)
    theta_tps = model.apply(variables, corr, method=MatchingModel.regress_tps)
    np.testing.assert_allclose(theta_tps, np.tile(identity_theta(18), (2, 1)), atol=0)
    # The TPS-only CNNGeo model: its head goes to tps_regression, the affine head is the identity.
    tps_only = {("FeatureRegression." + k[len("FeatureRegression2."):] if k.startswith("FeatureRegression2.")
                 else k): v for k, v in model_small_state.items() if not k.startswith("FeatureRegression.")}
    _, variables = weights.convert_torch_checkpoint(tps_only, "cnngeo", image_size=60)
    np.testing.assert_array_equal(variables["params"]["tps_regression"]["conv0"]["bias"],
                                  model_small_state["FeatureRegression2.conv.0.bias"])
    np.testing.assert_array_equal(variables["params"]["affine_regression"]["linear"]["bias"],
                                  identity_theta(6))


def test_infer_resnet_config_variants():
    def keys(kind_blocks):
        out = {"conv1.weight": np.zeros((32, 3, 7, 7))}
        for level, (n, conv3) in enumerate(kind_blocks, start=1):
            for i in range(n):
                out[f"layer{level}.{i}.conv1.weight"] = np.zeros(1)
                if conv3:
                    out[f"layer{level}.{i}.conv3.weight"] = np.zeros(1)
        return out
    assert weights.infer_resnet_config(keys([(2, False)] * 3)) == (18, "layer3", 32)
    assert weights.infer_resnet_config(keys([(3, False), (4, False)])) == (34, "layer2", 32)
    assert weights.infer_resnet_config(keys([(3, True), (4, True), (6, True)])) == (50, "layer3", 32)
    assert weights.infer_resnet_config(keys([(3, True), (8, True)])) == (152, "layer2", 32)
    assert weights.infer_resnet_config({"conv1.weight": np.zeros((8, 3, 7, 7))})[1] == "stem"
    with pytest.raises(ValueError, match="no ResNet depth"):
        weights.infer_resnet_config(keys([(3, True), (5, True)]))
    with pytest.raises(ValueError, match="VGG"):
        weights.infer_resnet_config({"conv1.weight": np.zeros((64, 3, 3, 3))})
