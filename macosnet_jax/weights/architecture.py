"""Inferring a torch checkpoint's architecture from its tensor names and shapes.

A torchvision ResNet (or weakalign's `FeatureExtraction.model.<i>` copy of one) gives (depth, last_layer, width);
weakalign/CNNGeo regression heads `FeatureRegression(2)?` give their conv channels and kernels, and are told apart
(affine / TPS) by their Linear's output size 6 / 18.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

from macosnet_jax.models import resnet as resnet_lib
from macosnet_jax.models.matching import MatchingModel

_RESNET_KEY = re.compile(r"^layer(\d)\.(\d+)\.(conv\d|bn\d|downsample)\.")
WEAKALIGN_MODULES = {0: "conv1", 1: "bn1", 4: "layer1", 5: "layer2", 6: "layer3", 7: "layer4"}
WEAKALIGN_PREFIX = "FeatureExtraction.model."


def _weakalign_encoder_to_torchvision(state_dict) -> dict:
    """FeatureExtraction.model.<i>.* -> torchvision names (i: 0 conv1, 1 bn1, 4..7 layer1..layer4)."""
    out = {}
    for name, value in state_dict.items():
        if name.startswith(WEAKALIGN_PREFIX):
            index, _, rest = name[len(WEAKALIGN_PREFIX):].partition(".")
            if index.isdigit() and int(index) in WEAKALIGN_MODULES:
                out[f"{WEAKALIGN_MODULES[int(index)]}.{rest}"] = value
    return out


def infer_resnet_config(state_dict: Mapping[str, Any]) -> tuple[int, str, int]:
    """(depth, last_layer, width) of a torchvision-named (or weakalign FeatureExtraction) ResNet state_dict.

    Depth comes from the block kind (conv3 present = Bottleneck) and the block counts of the present layers.
    A truncated net may fit several depths (ResNet-50/101/152 share layer1): their kept layers are identical,
    so the answer is then the paper's ResNet-101 if it fits, else the smallest that fits.
    """
    names = dict(state_dict)
    if not any(n.startswith(("conv1.", "layer")) for n in names):
        names = _weakalign_encoder_to_torchvision(state_dict)
    if "conv1.weight" not in names:
        raise ValueError("cannot infer the ResNet: no 'conv1.weight' (or 'FeatureExtraction.model.0.weight') "
                         f"among the keys; first keys: {list(state_dict)[:5]}")
    conv1 = np.shape(names["conv1.weight"])
    if tuple(conv1[1:]) != (3, 7, 7):
        raise ValueError(f"conv1.weight has shape {tuple(conv1)}; a ResNet stem is (width, 3, 7, 7) "
                         "(VGG feature extractors are not supported)")
    width = int(conv1[0])
    blocks, bottleneck = {}, False
    for name in names:
        match = _RESNET_KEY.match(name)
        if match:
            level, index = int(match.group(1)), int(match.group(2))
            blocks[level] = max(blocks.get(level, 0), index + 1)
            bottleneck |= match.group(3) == "conv3"
    levels = sorted(blocks)
    if levels != list(range(1, len(levels) + 1)):
        raise ValueError(f"ResNet layers present are {levels}; expected layer1..layerN without gaps")
    last_layer = resnet_lib.LAYER_NAMES[len(levels)]
    candidates = [
        depth for depth, (kind, counts) in resnet_lib.RESNET_CONFIGS.items()
        if (kind == "bottleneck") == bottleneck and all(counts[l - 1] == blocks[l] for l in levels)
    ]
    if not candidates:
        raise ValueError(f"no ResNet depth has {'Bottleneck' if bottleneck else 'BasicBlock'} blocks "
                         f"{[blocks[l] for l in levels]} in layers {levels}")
    depth = 101 if 101 in candidates else min(candidates)
    return depth, last_layer, width


def regression_heads(state_dict) -> dict:
    """{'affine_regression' | 'tps_regression': torch prefix}, told apart by the Linear's output size."""
    heads = {}
    for prefix in sorted({n.split(".")[0] for n in state_dict if n.startswith("FeatureRegression")}):
        linear = state_dict.get(f"{prefix}.linear.weight")
        if linear is None:
            raise ValueError(f"{prefix}: missing '{prefix}.linear.weight'")
        dim = int(np.shape(linear)[0])
        if dim not in (6, 18):
            raise ValueError(f"{prefix}.linear.weight has output size {dim}; expected 6 (affine) or 18 (TPS)")
        target = "affine_regression" if dim == 6 else "tps_regression"
        if target in heads:
            raise ValueError(f"two regression heads with output size {dim}: {heads[target]} and {prefix}")
        heads[target] = prefix
    return heads


def _regression_config(state_dict, prefix) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(channels, kernel_sizes) of a FeatureRegression from its conv.{3j}.weight shapes."""
    channels, kernels, j = [], [], 0
    while f"{prefix}.conv.{3 * j}.weight" in state_dict:
        shape = np.shape(state_dict[f"{prefix}.conv.{3 * j}.weight"])
        channels.append(int(shape[0]))
        kernels.append(int(shape[2]))
        j += 1
    if not channels:
        raise ValueError(f"{prefix}: no '{prefix}.conv.0.weight'")
    return tuple(channels), tuple(kernels)


def matching_model_from_state_dict(state_dict, layout: str = "weakalign", image_size: int = 240,
                                   **overrides) -> MatchingModel:
    """The MatchingModel whose variables a weakalign/CNNGeo state_dict fills (config inferred from the names)."""
    depth, last_layer, width = infer_resnet_config(state_dict)
    heads = regression_heads(state_dict)
    if not heads:
        raise ValueError(f"{layout} checkpoint has no FeatureRegression* entries")
    channels, kernels = _regression_config(state_dict, next(iter(heads.values())))
    return MatchingModel(depth=depth, last_layer=last_layer, width=width, image_size=image_size,
                         regression_channels=channels, regression_kernels=kernels, **overrides)
