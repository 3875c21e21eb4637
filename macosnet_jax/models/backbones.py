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
  decoder_widths(fields) (optional): the output channels of the decoder's stages before the last, when the
    decoder has more stages than skips (the stages past the skips add none); default: one per skip, its width.
  make(fields, update_batch_stats, precision): the Flax module, called as module(images (B, S, S, 3) normalised,
    train) -> {'features': (B, h, w, C), level name: (B, h_l, w_l, C_l), ...}.
  torch_layout: the layout name of its pretrained torch checkpoints for `weights.load_torch_checkpoint`.
  torch_module_name(parts): Flax module path inside the encoder -> the torch module name of the same weights.

Adding an encoder is one entry in BACKBONES. The two entries:
  'resnet': torchvision ResNet v1.5 cut after `last_layer`; its pyramid gives the decoder's skips.
  'dinov2': the DINOv2 ViT (models/dinov2.py) read from the `vit_*` fields (vit_embed_dim, vit_depth, vit_heads,
    vit_registers, vit_pos_grid; patch 14 is fixed, as in every official model): one level 'patches' of stride 14
    and vit_embed_dim channels (224 px -> a 16x16 grid), no skips. Its intermediate layers all lie on that same
    16x16 grid, so as skips they would add no detail at the finer strides the decoder climbs through; the decoder
    instead upsamples the [patch features, correlation] map through four 2x stages alone (widths D/2, D/4, D/8,
    then 1) and resizes the 16·h grid to the image size (`CosegDecoder.output_size`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import flax.linen as nn

from macosnet_jax.models import dinov2 as dinov2_lib
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
    decoder_widths: Callable[[EncoderFields], tuple[int, ...]] | None = None

    def feature_channels(self, fields: EncoderFields) -> int:
        """Channels of the encoder's 'features' output."""
        return self.levels(fields)[self.feature_level(fields)].channels

    def skip_widths(self, fields: EncoderFields) -> tuple[int, ...]:
        """Channels of each decoder skip, in `skips` order (the decoder's stage widths)."""
        levels = self.levels(fields)
        return tuple(levels[name].channels for name in self.skips(fields))

    def decoder_stage_widths(self, fields: EncoderFields) -> tuple[int, ...]:
        """Channels of the decoder's stages before the last: `decoder_widths`, or one per skip (`skip_widths`)."""
        return tuple(self.decoder_widths(fields)) if self.decoder_widths else self.skip_widths(fields)


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



# --------------------------------------------------------------------------------------------------------------
# DINOv2 ViT (official facebookresearch/dinov2 layout, models/dinov2.py).

# Defaults of the vit_* fields: ViT-S/14 without registers, the official 37x37 positional grid (518 px).
VIT_DEFAULTS = {"vit_embed_dim": 384, "vit_depth": 12, "vit_heads": 6, "vit_registers": 0, "vit_pos_grid": 37}


def dinov2_fields(fields: EncoderFields) -> dict:
    """DinoV2 keyword arguments from the vit_* fields; registers imply the `_reg` hub models' interpolation."""
    f = {k: int(fields.get(k, v)) for k, v in VIT_DEFAULTS.items()}
    if f["vit_embed_dim"] % f["vit_heads"]:
        raise ValueError(f"vit_embed_dim={f['vit_embed_dim']} is not a multiple of vit_heads={f['vit_heads']}")
    convention = dict(interpolate_offset=0.0, interpolate_antialias=True) if f["vit_registers"] else {}
    return dict(embed_dim=f["vit_embed_dim"], depth=f["vit_depth"], num_heads=f["vit_heads"],
                num_registers=f["vit_registers"], pos_grid=f["vit_pos_grid"], **convention)


def dinov2_levels(fields: EncoderFields) -> dict[str, Level]:
    """One level: 'patches', vit_embed_dim channels at stride 14."""
    return {"patches": Level(dinov2_fields(fields)["embed_dim"], dinov2_lib.PATCH_SIZE)}


def dinov2_decoder_widths(fields: EncoderFields) -> tuple[int, ...]:
    """Four 2x stages from the patch grid (as the ResNet-101/layer3 decoder's four), halving from D/2."""
    d = dinov2_fields(fields)["embed_dim"]
    return tuple(max(d // 2 ** k, 1) for k in (1, 2, 3))


def make_dinov2(fields: EncoderFields, update_batch_stats: bool = False, precision: Any = None) -> nn.Module:
    del update_batch_stats  # a ViT has no BatchNorm
    extra = {} if precision is None else {"precision": precision}
    return dinov2_lib.DinoV2Encoder(**dinov2_fields(fields), **extra)


DINOV2 = Backbone(name="dinov2", levels=dinov2_levels, feature_level=lambda fields: "patches",
                  skips=lambda fields: (), make=make_dinov2, torch_layout="dinov2",
                  torch_module_name=dinov2_lib.torch_module_name, decoder_widths=dinov2_decoder_widths)

BACKBONES: dict[str, Backbone] = {"resnet": RESNET, "dinov2": DINOV2}


def get(name: str) -> Backbone:
    """The entry of encoder family `name` (a model's `backbone` field)."""
    if name not in BACKBONES:
        raise ValueError(f"backbone={name!r} is unknown; expected one of {sorted(BACKBONES)}")
    return BACKBONES[name]
