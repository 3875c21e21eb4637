"""The encoder table: one `Backbone` entry per encoder family, the only place that states an encoder's facts.

The matching model builds its encoder from the entry named by its `backbone` field, the co-segmentation decoder
takes its skips and widths from the entry's levels, and the torch weight converter names the encoder's tensors
through the entry's `torch_module_name`. Nothing else hard-codes channel counts, strides or skip names.

An entry is a function of the encoder fields of the model config (`EncoderFields`: for the ResNet, `depth`,
`last_layer`, `width`) and gives:
  levels(fields): every activation the encoder returns besides 'features', shallowest first, ending with the
    feature level: name -> Level(channels, stride in input pixels).
  feature_level(fields): the name of the level that 'features' equals (the correlation reads it).
  skips(fields): the levels the decoder adds after each of its 2x upsampling stages, deepest first; () for an
    encoder without a pyramid (a ViT), whose decoder then upsamples the feature grid alone.
  make(fields, update_batch_stats, precision): the Flax module, called as module(images (B, S, S, 3) normalised,
    train) -> {'features': (B, h, w, C), level name: (B, h_l, w_l, C_l), ...}.
  torch_layout: the layout name of its pretrained torch checkpoints for `weights.load_torch_checkpoint`.
  torch_module_name(parts): Flax module path inside the encoder -> the torch module name of the same weights.

Adding an encoder is one entry in BACKBONES. A DINOv2 ViT (models/dinov2.py), for instance, is one feature level
of stride 14 (PATCH_SIZE) and embed_dim channels, no skips, `make` wrapping `DinoV2` so that it returns
{'features': feature_map}, torch_layout 'dinov2' and the ViT's own name map (weights' dinov2 module).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import flax.linen as nn

from macosnet_jax.models import resnet as resnet_lib

EncoderFields = Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class Level:
    """One encoder output: its channel count and its stride (input pixels per feature cell)."""
    channels: int
    stride: int


@dataclasses.dataclass(frozen=True)
class Backbone:
    """One encoder family; see the module docstring for what each field gives."""
    name: str
    levels: Callable[[EncoderFields], dict[str, Level]]
    feature_level: Callable[[EncoderFields], str]
    skips: Callable[[EncoderFields], tuple[str, ...]]
    make: Callable[..., nn.Module]
    torch_layout: str
    torch_module_name: Callable[[tuple[str, ...]], str]

    def feature_channels(self, fields: EncoderFields) -> int:
        """Channels of the encoder's 'features' output."""
        return self.levels(fields)[self.feature_level(fields)].channels

    def skip_widths(self, fields: EncoderFields) -> tuple[int, ...]:
        """Channels of each decoder skip, in `skips` order (the decoder's stage widths)."""
        levels = self.levels(fields)
        return tuple(levels[name].channels for name in self.skips(fields))


# --------------------------------------------------------------------------------------------------------------
# ResNet (torchvision layout, models/resnet.py).


def _resnet_fields(fields: EncoderFields) -> tuple[int, str, int]:
    return int(fields.get("depth", 101)), str(fields.get("last_layer", "layer3")), int(fields.get("width", 64))


def resnet_levels(fields: EncoderFields) -> dict[str, Level]:
    """'stem' (stride 2, before the max-pool) and 'layer1'..last_layer (strides 4, 8, 16, 32).

    Basic blocks (depth 18, 34) keep width·2^(i-1) channels in layer i; bottlenecks (50, 101, 152) expand 4x.
    """
    depth, last_layer, width = _resnet_fields(fields)
    if depth not in resnet_lib.RESNET_CONFIGS:
        raise ValueError(f"unsupported ResNet depth {depth}; expected one of {sorted(resnet_lib.RESNET_CONFIGS)}")
    if last_layer not in resnet_lib.LAYER_NAMES:
        raise ValueError(f"ResNet last_layer must be one of {resnet_lib.LAYER_NAMES}, got {last_layer!r}")
    levels = {"stem": Level(width, 2)}
    for i in range(1, resnet_lib.LAYER_NAMES.index(last_layer) + 1):
        levels[f"layer{i}"] = Level(resnet_lib.output_channels(depth, f"layer{i}", width), 2 ** (i + 1))
    return levels


def resnet_skips(fields: EncoderFields) -> tuple[str, ...]:
    """The levels above the cut, deepest first: layer3 -> (layer2, layer1, stem); layer1 -> (stem,)."""
    _, last_layer, _ = _resnet_fields(fields)
    names = resnet_lib.LAYER_NAMES
    if last_layer not in names[1:]:
        raise ValueError(f"decoder: last_layer must be one of {names[1:]}, got {last_layer!r}")
    return tuple(reversed(names[: names.index(last_layer)]))


def make_resnet(fields: EncoderFields, update_batch_stats: bool = False, precision: Any = None) -> nn.Module:
    depth, last_layer, width = _resnet_fields(fields)
    return resnet_lib.ResNet(depth=depth, last_layer=last_layer, width=width, update_batch_stats=update_batch_stats,
                             precision=precision)


RESNET = Backbone(name="resnet", levels=resnet_levels, feature_level=lambda fields: _resnet_fields(fields)[1],
                  skips=resnet_skips, make=make_resnet, torch_layout="torchvision_resnet",
                  torch_module_name=resnet_lib.torch_module_name)

BACKBONES: dict[str, Backbone] = {"resnet": RESNET}


def get(name: str) -> Backbone:
    """The entry of encoder family `name` (a model's `backbone` field)."""
    if name not in BACKBONES:
        raise ValueError(f"backbone={name!r} is unknown; expected one of {sorted(BACKBONES)}")
    return BACKBONES[name]
