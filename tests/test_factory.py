"""The model factory and the backbone table: the table's levels are what the encoder returns, the decoder and the
weight converter follow the table, and a ViT-shaped entry (one level, patch stride 14, no skips) fits it."""
import jax
import jax.numpy as jnp
import ml_collections
import pytest

from macosnet_jax.models import backbones, factory
from macosnet_jax.models.macosnet import MaCoSNet
from macosnet_jax.models.matching import MatchingModel


@pytest.mark.parametrize("depth,last_layer,width", [(18, "layer3", 8), (50, "layer2", 4), (34, "layer1", 8)])
def test_resnet_levels_are_what_the_encoder_returns(depth, last_layer, width):
    fields = {"depth": depth, "last_layer": last_layer, "width": width}
    entry = backbones.get("resnet")
    encoder = entry.make(fields)
    size = 64
    images = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    out = jax.eval_shape(lambda x: encoder.init_with_output(jax.random.PRNGKey(0), x)[0], images)
    levels = entry.levels(fields)
    assert set(levels) == set(out) - {"features"}
    for name, level in levels.items():
        assert out[name].shape == (1, size // level.stride, size // level.stride, level.channels), name
    assert out["features"].shape[-1] == entry.feature_channels(fields)
    assert entry.feature_level(fields) == last_layer


def test_decoder_of_the_joint_model_follows_the_table():
    model = factory.build_model("macosnet", 64, depth=18, last_layer="layer2", width=8)
    fields = model.matching.encoder_fields()
    assert tuple(model.decoder.skips) == backbones.RESNET.skips(fields) == ("layer1", "stem")
    assert tuple(model.decoder.widths) == (8, 8)


def test_a_vit_shaped_entry_fits_the_table():
    vit = backbones.Backbone(
        name="vit", levels=lambda f: {"patches": backbones.Level(384, 14)}, feature_level=lambda f: "patches",
        skips=lambda f: (), make=lambda f, update_batch_stats=False, precision=None: None, torch_layout="dinov2",
        torch_module_name=lambda parts: ".".join(parts))
    assert vit.feature_channels({}) == 384 and vit.skip_widths({}) == ()


def test_unknown_backbone_is_a_clear_error():
    with pytest.raises(ValueError, match="backbone='vgg' is unknown"):
        backbones.get("vgg")


def _config(stage):
    return ml_collections.ConfigDict({"stage": stage, "image_size": 64, "model": {
        "depth": 18, "last_layer": "layer3", "width": 8, "regression_channels": [16, 8],
        "regression_kernels": [3, 3]}})


@pytest.mark.parametrize("stage,kind", [("strong_synthetic", MatchingModel), ("weak", MatchingModel),
                                        ("joint", MaCoSNet)])
def test_model_for_config_maps_each_stage(stage, kind):
    model = factory.model_for_config(_config(stage))
    assert isinstance(model, kind)
    matching = model if isinstance(model, MatchingModel) else model.matching
    assert matching.regression_channels == (16, 8) and matching.image_size == 64


def test_model_for_config_names_the_config_of_an_unknown_stage():
    with pytest.raises(ValueError, match="run/config.json: stage='pretrain'"):
        factory.model_for_config(_config("pretrain"), "run/config.json")


def test_perceptual_network_is_built_from_the_table():
    config = _config("joint")
    config.losses = {"perceptual_net": "strong_encoder"}
    net = factory.perceptual_network(config)
    assert (net.depth, net.last_layer, net.width) == (18, "layer3", 8)
    config.losses.perceptual_net = "imagenet_resnet50"
    net = factory.perceptual_network(config)
    assert (net.depth, net.last_layer, net.width) == (50, "layer4", 64)
    config.losses.perceptual_net = "clip"
    with pytest.raises(ValueError, match="perceptual_net='clip'"):
        factory.perceptual_network(config)
