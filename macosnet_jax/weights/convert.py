"""Torch state_dicts -> Flax variables of our models (weakalign, CNNGeo, torchvision ResNet layouts; official
DINOv2 files through weights/dinov2.py).

The target Flax variables are enumerated from the model itself (an abstract `init`), and each one names the torch
tensor it needs: encoder modules through the backbone entry's `torch_module_name` (models/backbones.py), the
regression heads through their torch Sequential indices. Conv OIHW -> HWIO; BatchNorm weight/bias -> scale/bias
(params), running_mean/var -> mean/var (batch_stats); Linear transposed, and the regression head's 1600-d input
permuted from torch's (C, H, W) flatten to NHWC's (H, W, C). Every torch tensor must be consumed and every Flax
variable filled (num_batches_tracked is ignored; torchvision's classifier `fc.*` and layers beyond the requested
last layer are dropped on purpose), else a WeightsMismatchError lists the missing, unexpected and mis-shaped names.
"""
from __future__ import annotations

import re
from typing import Mapping

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from macosnet_jax.models import backbones
from macosnet_jax.models import resnet as resnet_lib
from macosnet_jax.models.regression import identity_theta
from macosnet_jax.weights import dinov2 as dinov2_weights
from macosnet_jax.weights.architecture import (WEAKALIGN_MODULES, WEAKALIGN_PREFIX, regression_heads,
                                               infer_resnet_config, matching_model_from_state_dict)
from macosnet_jax.weights.torch_pickle import extract_state_dict, load_torch_state_dict

_ENCODER = backbones.RESNET  # weakalign/CNNGeo/torchvision checkpoints hold torchvision ResNets
_LEAF_TO_TORCH = {("params", "kernel"): "weight", ("params", "scale"): "weight", ("params", "bias"): "bias",
                  ("batch_stats", "mean"): "running_mean", ("batch_stats", "var"): "running_var"}


def _regression_module_name(part) -> str:
    """conv{j} -> conv.{3j}, bn{j} -> conv.{3j+1}, linear -> linear (torch's Sequential indices)."""
    match = re.fullmatch(r"(conv|bn)(\d+)", part)
    if match:
        j = int(match.group(2))
        return f"conv.{3 * j + (match.group(1) == 'bn')}"
    return part


def _torch_conv_to_flax(weight):
    return np.transpose(weight, (2, 3, 1, 0))  # OIHW -> HWIO


def _torch_flatten_linear_to_flax(weight, channels):
    """Linear (D, C·H·W) fed by torch's (C, H, W) flatten -> Dense kernel (H·W·C, D) for an NHWC flatten."""
    out_dim, in_dim = weight.shape
    spatial = in_dim // channels
    side = int(round(spatial ** 0.5))
    if channels * side * side != in_dim:
        raise ValueError(f"Linear input {in_dim} is not {channels} channels on a square grid")
    return weight.reshape(out_dim, channels, side, side).transpose(2, 3, 1, 0).reshape(in_dim, out_dim)


class WeightsMismatchError(ValueError):
    """Torch weights that do not fit the configured model: names missing / unexpected, tensors of other shapes.

    misshaped: [(torch name, shape it converts to, shape the model expects, flax path), ...].
    """

    def __init__(self, missing, unexpected, misshaped):
        self.missing, self.unexpected, self.misshaped = list(missing), list(unexpected), list(misshaped)
        shaped = [f"{n}: torch gives {got}, model expects {want} ({path})" for n, got, want, path in misshaped]
        super().__init__("checkpoint does not match the model:\n"
                         f"  missing ({len(missing)}): {self.missing}\n"
                         f"  unexpected ({len(unexpected)}): {self.unexpected}\n"
                         f"  mis-shaped ({len(misshaped)}): {shaped}")

    def correlation_channels(self) -> tuple[int, int] | None:
        """(checkpoint, model) input channels of the first regression conv when they differ, else None.

        Those channels are the correlation's h*w feature cells, so they differ when the input size does.
        """
        for _, got, want, path in self.misshaped:
            if "regression" in path and "conv0" in path and len(got) == 4 and got[:2] == want[:2]:
                return int(got[2]), int(want[2])
        return None


def _convert(abstract, torch_name_of, state_dict, transform_of, dropped=()) -> dict:
    """Fills every leaf of `abstract` (flax variables of ShapeDtypeStructs) from state_dict; strict.

    torch_name_of(path) -> torch name or None (None: leave the leaf to a default filler, see caller);
    transform_of(path, array) -> array in Flax layout. Names matching a prefix in `dropped` may stay unused.
    """
    flat = flax.traverse_util.flatten_dict(abstract)
    out, missing, misshaped, used = {}, [], [], set()
    for path, leaf in flat.items():
        name = torch_name_of(path)
        if name is None:
            continue
        if name not in state_dict:
            missing.append(name)
            continue
        used.add(name)
        value = transform_of(path, np.asarray(state_dict[name]))
        if value.shape != tuple(leaf.shape):
            misshaped.append((name, tuple(value.shape), tuple(leaf.shape), "/".join(path)))
            continue
        out[path] = jnp.asarray(value, leaf.dtype)
    unexpected = [n for n in state_dict if n not in used and not n.endswith(".num_batches_tracked")
                  and not n.startswith(tuple(dropped))]
    if missing or unexpected or misshaped:
        raise WeightsMismatchError(missing, unexpected, misshaped)
    return out


def _leaf_transform(regression_channels):
    def transform(path, array):
        if path[-1] == "kernel":
            if array.ndim == 4:
                return _torch_conv_to_flax(array)
            if array.ndim == 2:
                if "linear" in path and regression_channels:
                    return _torch_flatten_linear_to_flax(array, regression_channels)
                return array.T
        return array
    return transform


def _identity_head(abstract_head: dict, output_dim: int) -> dict:
    """Variables of a FeatureRegression that outputs the identity θ for any input (zero Dense kernel)."""
    def fill(path, leaf):
        if path[-1] == "bias" and path[-2] == "linear":
            return jnp.asarray(identity_theta(output_dim), leaf.dtype)
        if path[-1] in ("scale", "var"):
            return jnp.ones(leaf.shape, leaf.dtype)
        return jnp.zeros(leaf.shape, leaf.dtype)
    flat = flax.traverse_util.flatten_dict(abstract_head)
    return {path: fill(path, leaf) for path, leaf in flat.items()}


def _abstract_variables(model, *inputs):
    return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *inputs, train=False))


def convert_torch_checkpoint(path_or_mapping, layout: str, image_size: int = 240, last_layer: str | None = None,
                             **model_overrides):
    """(model, variables) from a torch checkpoint; see `load_torch_checkpoint`."""
    if isinstance(path_or_mapping, Mapping):
        state_dict = extract_state_dict(path_or_mapping, "state_dict mapping")
    else:
        state_dict = load_torch_state_dict(path_or_mapping)

    if layout == "torchvision_resnet":
        depth, inferred_last, width = infer_resnet_config(state_dict)
        last = last_layer or inferred_last
        if resnet_lib.LAYER_NAMES.index(last) > resnet_lib.LAYER_NAMES.index(inferred_last):
            raise ValueError(f"last_layer={last!r} but the checkpoint only holds up to {inferred_last!r}")
        dropped = ["fc."] + [f"{n}." for n in resnet_lib.LAYER_NAMES[resnet_lib.LAYER_NAMES.index(last) + 1:]]
        model = resnet_lib.ResNet(depth=depth, last_layer=last, width=width, **model_overrides)
        abstract = _abstract_variables(model, jnp.zeros((1, 64, 64, 3)))

        def name_of(path):
            return f"{_ENCODER.torch_module_name(path[1:-1])}.{_LEAF_TO_TORCH[(path[0], path[-1])]}"

        flat = _convert(abstract, name_of, state_dict, _leaf_transform(None), dropped)
        return model, flax.traverse_util.unflatten_dict(flat)

    if layout == "dinov2":
        if last_layer is not None:
            raise ValueError("last_layer applies to layout='torchvision_resnet' only")
        model, variables = dinov2_weights.load_dinov2(path_or_mapping, **model_overrides)
        return model, {"params": variables["params"], "batch_stats": {}}

    if layout not in ("weakalign", "cnngeo"):
        raise ValueError(f"unknown checkpoint layout {layout!r}; expected 'weakalign', 'cnngeo', "
                         "'torchvision_resnet' or 'dinov2'")
    if last_layer is not None:
        raise ValueError("last_layer applies to layout='torchvision_resnet' only")
    heads = regression_heads(state_dict)
    if layout == "weakalign" and set(heads) != {"affine_regression", "tps_regression"}:
        raise ValueError(f"weakalign checkpoint must hold an affine (6) and a TPS (18) FeatureRegression; "
                         f"found {heads or 'none'}")
    model = matching_model_from_state_dict(state_dict, layout, image_size, **model_overrides)
    images = jnp.zeros((1, image_size, image_size, 3))
    abstract = _abstract_variables(model, images, images)
    channels = model.regression_channels[-1]

    def name_of(path):
        collection, module, *inner, leaf = path
        if module == "encoder":
            tv_name = _ENCODER.torch_module_name(inner)
            top = tv_name.split(".")[0]
            index = {v: k for k, v in WEAKALIGN_MODULES.items()}[top]
            torch_module = f"{WEAKALIGN_PREFIX}{index}{tv_name[len(top):]}"
        else:
            if module not in heads:
                return None  # a head the (single-stage CNNGeo) checkpoint lacks: filled with the identity below
            torch_module = f"{heads[module]}.{_regression_module_name(inner[0])}"
        return f"{torch_module}.{_LEAF_TO_TORCH[(collection, leaf)]}"

    flat = _convert(abstract, name_of, state_dict, _leaf_transform(channels))
    for head, dim in (("affine_regression", 6), ("tps_regression", 18)):
        if head not in heads:
            sub = {c: abstract[c][head] for c in abstract}
            flat.update({(p[0], head) + p[1:]: v for p, v in _identity_head(sub, dim).items()})
    return model, flax.traverse_util.unflatten_dict(flat)


def load_torch_checkpoint(path_or_mapping, layout: str, image_size: int = 240, last_layer: str | None = None):
    """Flax variables {'params', 'batch_stats'} from a torch checkpoint file or a name -> array mapping.

    layout:
      'weakalign' / 'cnngeo': `FeatureExtraction.model.<i>.*` -> encoder, `FeatureRegression(2)?.*` ->
        affine_regression / tps_regression (told apart by output size 6 / 18), for
        `MatchingModel(**config inferred from the names, image_size=image_size)` (use
        `convert_torch_checkpoint` to get that model too). A single-stage CNNGeo checkpoint holds one head; the
        other is filled with an identity head (zero Dense kernel, identity bias), so the cascade reduces to
        the single-stage model.
      'torchvision_resnet': conv1/bn1/layerN.* -> `ResNet` variables; `fc.*` and layers after `last_layer`
        (default: the last one present) are dropped.
      'dinov2': an official DINOv2 state_dict -> the variables of the `DinoV2` its tensors describe
        (`weights.load_dinov2`; batch_stats empty), e.g. the encoder of a backbone='dinov2' model.
    Raises ValueError listing missing, unexpected and mis-shaped names when the checkpoint and model disagree.
    """
    return convert_torch_checkpoint(path_or_mapping, layout, image_size, last_layer)[1]
