"""The one map from a config (or a trained run's config) to its Flax model.

Training stages, inference (`predict.Matcher`), the command-line tools and the demo all build their networks here:
  matching_model(config)   -> MatchingModel (the two-stage affine -> TPS matcher), config.image_size + config.model
  macosnet_model(config)   -> MaCoSNet (matcher + co-segmentation decoder sized from the encoder's backbone entry)
  perceptual_network(config) -> the frozen network F of the contrastive loss (config.losses.perceptual_net)
  model_for_config(config) -> whichever of the first two the config's stage trains (STAGE_MODELS)
  build_model(kind, image_size, **fields) -> the same from plain fields (the CLI's random-init models)
config.model holds the MatchingModel fields (backbone, depth, last_layer, width, vit_*, regression_channels, ...);
the encoder itself comes from the entry of models/backbones.py that `backbone` names ('resnet' (default) or
'dinov2').
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import ml_collections

from macosnet_jax.models import backbones
from macosnet_jax.models.macosnet import MaCoSNet, build_macosnet
from macosnet_jax.models.matching import MatchingModel

# Model kind -> builder(image_size=..., **config.model fields).
MODELS: dict[str, Callable[..., nn.Module]] = {"matching": MatchingModel, "macosnet": build_macosnet}
# Training stage (config.stage) -> the kind of model it trains.
STAGE_MODELS = {"strong_synthetic": "matching", "weak": "matching", "joint": "macosnet"}


def build_model(kind: str, image_size: int, **fields) -> MatchingModel | MaCoSNet:
    """The model of kind 'matching' | 'macosnet' with MatchingModel `fields` at input size `image_size`."""
    if kind not in MODELS:
        raise ValueError(f"model kind {kind!r} is unknown; expected one of {sorted(MODELS)}")
    return MODELS[kind](image_size=image_size, **fields)


def matching_model(config: ml_collections.ConfigDict, **overrides) -> MatchingModel:
    """MatchingModel(image_size=config.image_size, **config.model, **overrides)."""
    fields = dict(config.model)
    fields.update(overrides)
    return build_model("matching", config.image_size, **fields)


def macosnet_model(config: ml_collections.ConfigDict) -> MaCoSNet:
    """The joint MaCoSNet of config.image_size and config.model."""
    return build_model("macosnet", config.image_size, **dict(config.model))


def perceptual_network(config: ml_collections.ConfigDict) -> nn.Module:
    """The frozen network F of the contrastive loss (SPEC §6.4), by config.losses.perceptual_net:

    'imagenet_resnet50': ResNet-50 to layer4 (2048-d after pooling), weights from config.losses.perceptual_weights
      (a torchvision .pth); 'strong_encoder': a copy of the matching encoder as it was at the start of this stage
      (the CPU demo, where no ImageNet weights exist; the DINOv2 configs, whose initial encoder is the pretrained
      ViT), taken from the stage's initial weights.
    """
    kind = config.losses.perceptual_net
    if kind == "imagenet_resnet50":
        return backbones.RESNET.make({"depth": 50, "last_layer": "layer4", "width": 64})
    if kind == "strong_encoder":
        matching = matching_model(config)
        return backbones.get(matching.backbone).make(matching.encoder_fields())
    raise ValueError(f"config.losses.perceptual_net='{kind}' is unknown; expected imagenet_resnet50 or strong_encoder")


def _tuples(value: Any) -> Any:
    """JSON lists back to tuples (config.json stores the config's tuples as lists; module fields want tuples)."""
    if isinstance(value, (list, tuple)):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value


def model_for_config(config: ml_collections.ConfigDict, where: str = "config") -> MatchingModel | MaCoSNet:
    """The Flax module a training config describes: MatchingModel ('strong_synthetic', 'weak') or MaCoSNet ('joint').

    `where` names the config in the error raised for a stage without an inference model.
    """
    config = config.copy_and_resolve_references()
    if config.stage not in STAGE_MODELS:
        raise ValueError(f"{where}: stage={config.stage!r} has no known inference model; expected one of "
                         f"{tuple(STAGE_MODELS)}")
    return build_model(STAGE_MODELS[config.stage], config.image_size, **_tuples(config.model.to_dict()))
