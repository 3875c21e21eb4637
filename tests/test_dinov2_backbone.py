"""DINOv2 as the backbone of the matching and MaCoSNet models: the table entry against what the encoder returns,
the heads and decoder sized for the patch grid, official weights into the encoder through config.init_torch
(checked against the fixtures' own forward of the tiny official-layout ViT), and the optimizer's encoder group."""
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from macosnet_jax import experiment_config, train, weights
from macosnet_jax.models import backbones, factory
from macosnet_jax.models.decoder import CosegDecoder

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "dinov2"
TINY = dict(backbone="dinov2", vit_embed_dim=48, vit_depth=3, vit_heads=3, vit_registers=0, vit_pos_grid=7)
VIT_S = {"vit_embed_dim": 384, "vit_depth": 12, "vit_heads": 6, "vit_registers": 0, "vit_pos_grid": 37}


def _shapes(fn):
    return jax.tree.map(lambda x: x.shape, jax.eval_shape(fn))


def test_dinov2_entry_levels_are_what_the_encoder_returns():
    entry = backbones.get("dinov2")
    out = _shapes(lambda: entry.make(VIT_S).init_with_output(jax.random.key(0), jnp.zeros((2, 224, 224, 3)))[0])
    assert out == {"features": (2, 16, 16, 384), "patches": (2, 16, 16, 384)}
    assert entry.levels(VIT_S) == {"patches": backbones.Level(384, 14)} and entry.feature_level(VIT_S) == "patches"
    assert entry.feature_channels(VIT_S) == 384 and entry.skips(VIT_S) == ()
    assert entry.decoder_stage_widths(VIT_S) == (192, 96, 48)
    assert backbones.RESNET.decoder_stage_widths({"depth": 101, "last_layer": "layer3"}) == (512, 256, 64)
    with pytest.raises(ValueError, match="not a multiple of vit_heads"):
        entry.make({**VIT_S, "vit_heads": 5})


def test_matching_heads_and_decoder_are_sized_for_the_patch_grid():
    """ViT-S/14 at 224 px: correlation 16x16x256; heads (7, 5) VALID -> 6x6x64 -> Dense; masks at 224."""
    model = factory.build_model("macosnet", 224, backbone="dinov2")
    images = jnp.zeros((1, 224, 224, 3))
    variables, out = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), images, images)[::-1])
    assert out["corr"]["ab"].shape == (1, 16, 16, 256)
    assert out["mask_logits"]["a"].shape == (1, 224, 224) and out["theta_tps"]["ab"].shape == (1, 18)
    params = variables["params"]
    head = params["matching"]["affine_regression"]
    assert head["conv0"]["kernel"].shape == (7, 7, 256, 128) and head["linear"]["kernel"].shape == (6 * 6 * 64, 6)
    assert params["decoder"]["deconv1"]["kernel"].shape == (3, 3, 384 + 256, 192)
    assert params["decoder"]["deconv4"]["kernel"].shape == (3, 3, 48, 1)
    assert "encoder" not in variables["batch_stats"]["matching"]  # a ViT has no BatchNorm


def test_decoder_without_skips_upsamples_then_resizes_to_the_image():
    features, corr = jnp.ones((1, 3, 3, 2)), jnp.ones((1, 3, 3, 9))
    native = CosegDecoder(widths=(4, 2), skips=())
    variables = native.init(jax.random.key(0), features, corr, {}, False)
    logits = native.apply(variables, features, corr, {}, False)
    assert logits.shape == (1, 24, 24, 1)  # three 2x stages
    same = CosegDecoder(widths=(4, 2), skips=(), output_size=24).apply(variables, features, corr, {}, False)
    np.testing.assert_array_equal(same, logits)
    resized = CosegDecoder(widths=(4, 2), skips=(), output_size=21).apply(variables, features, corr, {}, False)
    assert resized.shape == (1, 21, 21, 1)
    # The bilinear-initialised stages upsample a constant input to a constant block (away from the bottom-right
    # edge, where output_padding pads zeros); the resize keeps it.
    np.testing.assert_allclose(resized[0, 2:12, 2:12, 0], float(logits[0, 10, 10, 0]), rtol=1e-4)
    with pytest.raises(ValueError, match="at least one width per skip"):
        CosegDecoder(widths=(4,), skips=("a", "b")).init(jax.random.key(0), features, corr, {}, False)


def _joint_config(image_size=98, **model):
    config = experiment_config.base_config()
    config.stage = "joint"
    config.image_size = image_size
    config.model = dict(TINY, regression_channels=(8, 4), regression_kernels=(3, 3), init_identity=True, **model)
    config.losses = dict(perceptual_net="strong_encoder")
    config.data = dict(name="synthetic_objects", num_images=8, num_categories=2, seed=0)
    config.batch_size = 1
    config.optimizer.param_groups = [("(^|/)encoder(/|$)", "encoder")]
    config.optimizer.frozen_groups = ["encoder"]
    config.init_torch = dict(path=str(FIXTURES / "vit_tiny.pth"), layout="dinov2", prefix="matching/encoder")
    return ml_collections.ConfigDict(config)


def test_official_weights_load_into_the_joint_models_encoder_and_its_perceptual_copy():
    """config.init_torch (layout 'dinov2', prefix 'matching/encoder'): the encoder of the trained model then gives
    the fixtures' x_norm_patchtokens (their independent torch forward) on the fixtures' native 98 px input."""
    with np.load(FIXTURES / "vit_tiny.npz") as f:
        x = jnp.asarray(np.transpose(f["native_x"], (0, 2, 3, 1)))
        expected = f["native_x_norm_patchtokens"].reshape(1, 7, 7, 48)
        cls_token = f["cls_token"]
    config = _joint_config()
    stage = train.build_stage(config)
    mesh = train.make_mesh(jax.devices()[:1])
    state = train.initial_state(config, stage, train.make_optimizer(config.optimizer), mesh)
    encoder = state.params["matching"]["encoder"]
    np.testing.assert_array_equal(encoder["cls_token"], cls_token)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    features = stage.model.apply(variables, x, method=lambda m, im: m.matching.encode(im)["features"])
    np.testing.assert_allclose(features, expected, atol=1e-5, rtol=0)
    # The contrastive loss's F ('strong_encoder') is the frozen copy of this initial encoder.
    for got, want in zip(jax.tree.leaves(state.frozen["params"]), jax.tree.leaves(encoder)):
        np.testing.assert_array_equal(got, want)


def test_official_weights_load_into_the_weak_stages_matching_model():
    """The weak stage trains a bare MatchingModel: the same file goes under prefix 'encoder'."""
    config = _joint_config()
    config.stage = "weak"
    config.init_torch.prefix = "encoder"
    stage = train.build_stage(config)
    state = train.initial_state(config, stage, train.make_optimizer(config.optimizer),
                                train.make_mesh(jax.devices()[:1]))
    with np.load(FIXTURES / "vit_tiny.npz") as f:
        qkv, pos = f["blocks.2.attn.qkv.weight"], f["pos_embed"]
    encoder = state.params["encoder"]
    np.testing.assert_array_equal(encoder["blocks_2"]["attn"]["qkv"]["kernel"], qkv.T)
    np.testing.assert_array_equal(encoder["pos_embed"], pos)


def test_a_checkpoint_of_another_size_is_a_clear_error():
    config = _joint_config(vit_depth=2)
    load = train.build_stage(config).load_torch
    with pytest.raises(ValueError, match="vit_depth: checkpoint 3, model 2"):
        load(config.init_torch.path, "dinov2")
    config = _joint_config()
    config.model.backbone = "resnet"
    with pytest.raises(ValueError, match="needs config.model.backbone='dinov2'"):
        train.build_stage(config).load_torch(config.init_torch.path, "dinov2")


def test_layout_dinov2_of_load_torch_checkpoint_is_the_bare_vit():
    variables = weights.load_torch_checkpoint(FIXTURES / "vit_tiny.pth", "dinov2")
    _, reference = weights.load_dinov2(FIXTURES / "vit_tiny.npz")
    assert variables["batch_stats"] == {}
    for got, want in zip(jax.tree.leaves(variables["params"]), jax.tree.leaves(reference["params"])):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("mode", ["frozen", "finetune"])
def test_encoder_group_is_frozen_or_trained_at_its_own_rate(mode):
    """Adam's first update is -lr·g/(|g| + eps) ≈ -lr per parameter: 0 (frozen) or 1e-6 for the encoder, 1e-4 for
    the heads and the decoder."""
    model = factory.build_model("macosnet", 56, **dict(TINY, vit_pos_grid=4), regression_channels=(4, 4),
                                regression_kernels=(3, 2))
    images = jax.ShapeDtypeStruct((1, 56, 56, 3), jnp.float32)
    params = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, x), images)["params"]
    grads = jax.tree.map(lambda p: jnp.ones(p.shape, p.dtype), params)
    opt = ml_collections.ConfigDict(dict(
        name="adam", learning_rate=1e-4, param_groups=[("(^|/)encoder(/|$)", "encoder"),
                                                       ("(^|/)decoder(/|$)", "decoder")],
        group_lr={"decoder": 1e-4, **({"encoder": 1e-6} if mode == "finetune" else {})},
        frozen_groups=["encoder"] if mode == "frozen" else []))
    tx = train.make_optimizer(opt)
    updates, _ = jax.jit(tx.update)(grads, tx.init(grads), grads)
    encoder_lr = 0.0 if mode == "frozen" else 1e-6
    for path, value in jax.tree_util.tree_leaves_with_path(updates):
        key = jax.tree_util.keystr(path)
        want = encoder_lr if "'encoder'" in key else 1e-4
        np.testing.assert_allclose(value, -want, rtol=1e-3, err_msg=key)
