"""Official DINOv2 checkpoints (facebookresearch/dinov2 `.pth` state_dicts) -> (DinoV2 model, Flax variables).

The files (`dinov2_vit{s,b,l,g}14[_reg4]_pretrain.pth`) are plain state_dicts in torch's zip format, read by
`weights.torch_pickle.load_torch_state_dict` (no torch needed). The architecture is inferred from the tensors:
embed_dim from `cls_token`, depth from the `blocks.{i}.` indices, register count from `register_tokens`, the stored
positional grid from `pos_embed`, the FFN (`mlp.fc1` -> GELU MLP of that width, `mlp.w12` -> SwiGLU), LayerScale
from `ls1.gamma`. The head count is not stored in any tensor: every official size uses head_dim 64, so
num_heads = embed_dim / 64; embed dims that are not a multiple of 64 (test-size models) use head_dim 16. Register
models get the `_reg` hub's interpolation (size call, antialiased), the others the scale-factor call with offset 0.1.

Conversion is strict: every tensor is consumed and every variable filled, or a ValueError lists what is missing,
unexpected and mis-shaped. Layouts: Linear (out, in) -> Dense kernel (in, out); patch conv OIHW -> HWIO;
LayerNorm weight -> scale.
"""
from __future__ import annotations

import math
import os
import re
from typing import Any, Mapping

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from macosnet_jax.models.dinov2 import DinoV2, torch_module_name
from macosnet_jax.weights.torch_pickle import load_torch_state_dict

_TOKENS = ("cls_token", "pos_embed", "mask_token", "register_tokens")
_BLOCK = re.compile(r"^blocks\.(\d+)\.")


def read_state_dict(path_or_mapping) -> dict[str, np.ndarray]:
    """name -> array from a `.pth` (torch zip/legacy format), an `.npz` of torch names, or a mapping.

    A leading 'module.' (DataParallel) is stripped; in an `.npz`, arrays other than the ViT's tensors (names with a
    '.' or one of the token tables) are ignored, so a file may carry test inputs beside the weights.
    """
    if isinstance(path_or_mapping, Mapping):
        items = dict(path_or_mapping)
        for key in ("state_dict", "model", "teacher"):
            if key in items and isinstance(items[key], Mapping):
                items = dict(items[key])
                break
    elif os.fspath(path_or_mapping).endswith(".npz"):
        with np.load(path_or_mapping) as data:
            items = {k: data[k] for k in data.files if "." in k or k in _TOKENS}
    else:
        items = dict(load_torch_state_dict(path_or_mapping))
    out = {}
    for name, value in items.items():
        while name.startswith("module."):
            name = name[len("module."):]
        out[name] = np.asarray(value)
    return out


def infer_dinov2_config(state_dict: Mapping[str, Any]) -> dict:
    """DinoV2 keyword arguments (embed_dim, depth, num_heads, mlp_ratio, ffn, num_registers, pos_grid,
    interpolate_offset, interpolate_antialias, layerscale) from official state_dict names and shapes."""
    for key in ("cls_token", "pos_embed", "patch_embed.proj.weight"):
        if key not in state_dict:
            raise ValueError(f"not a DINOv2 state_dict: no {key!r} (keys start {list(state_dict)[:5]})")
    dim = int(np.shape(state_dict["cls_token"])[-1])
    blocks = {int(m.group(1)) for m in map(_BLOCK.match, state_dict) if m}
    if not blocks or blocks != set(range(max(blocks) + 1)):
        raise ValueError(f"DINOv2 state_dict: blocks must be numbered 0..depth-1, found {sorted(blocks)}")
    n_pos = int(np.shape(state_dict["pos_embed"])[1]) - 1
    grid = int(round(math.sqrt(n_pos)))
    if grid * grid != n_pos:
        raise ValueError(f"DINOv2 state_dict: pos_embed holds {n_pos} patch positions, not a square grid")
    if "blocks.0.mlp.w12.weight" in state_dict:
        ffn, mlp_ratio = "swiglu", 4.0
    else:
        ffn, mlp_ratio = "mlp", np.shape(state_dict["blocks.0.mlp.fc1.weight"])[0] / dim
    registers = int(np.shape(state_dict["register_tokens"])[1]) if "register_tokens" in state_dict else 0
    return dict(embed_dim=dim, depth=max(blocks) + 1, num_heads=dim // 64 if dim % 64 == 0 else dim // 16,
                mlp_ratio=float(mlp_ratio), ffn=ffn, num_registers=registers, pos_grid=grid,
                interpolate_offset=0.0 if registers else 0.1, interpolate_antialias=bool(registers),
                layerscale="blocks.0.ls1.gamma" in state_dict)


def torch_name(path: tuple[str, ...]) -> str:
    """Flax variable path ('params', ...) -> the official state_dict name."""
    leaf = "weight" if path[-1] in ("kernel", "scale") else path[-1]
    module = torch_module_name(path[1:-1])
    return f"{module}.{leaf}" if module else leaf


def _to_flax(path: tuple[str, ...], array: np.ndarray) -> np.ndarray:
    if path[-1] == "kernel":
        return array.transpose(2, 3, 1, 0) if array.ndim == 4 else array.T
    return array


def convert_dinov2(state_dict: Mapping[str, np.ndarray], model: DinoV2) -> dict:
    """Flax variables {'params': ...} of `model` filled from `state_dict`; strict (ValueError lists the misfits)."""
    abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 14, 14, 3), jnp.float32))
    flat = flax.traverse_util.flatten_dict(abstract)
    out, missing, misshaped, used = {}, [], [], set()
    for path, leaf in flat.items():
        name = torch_name(path)
        if name not in state_dict:
            missing.append(name)
            continue
        used.add(name)
        value = _to_flax(path, np.asarray(state_dict[name]))
        if value.shape != tuple(leaf.shape):
            misshaped.append(f"{name}: torch {np.shape(state_dict[name])}, model expects {tuple(leaf.shape)} "
                             f"after the layout change ({'/'.join(path)})")
            continue
        out[path] = jnp.asarray(value, leaf.dtype)
    unexpected = sorted(set(state_dict) - used)
    if missing or unexpected or misshaped:
        raise ValueError("DINOv2 checkpoint does not match the model:\n"
                         f"  missing ({len(missing)}): {missing}\n"
                         f"  unexpected ({len(unexpected)}): {unexpected}\n"
                         f"  mis-shaped ({len(misshaped)}): {misshaped}")
    return flax.traverse_util.unflatten_dict(out)


def load_dinov2(path_or_mapping, **overrides) -> tuple[DinoV2, dict]:
    """(model, variables) from an official-layout DINOv2 `.pth` / `.npz` / name -> array mapping.

    overrides replace inferred DinoV2 fields (e.g. num_heads for a non-standard head size, precision).
    `model.apply(variables, images)` with images (B, H, W, 3) ImageNet-normalised, H, W multiples of 14.
    """
    state_dict = read_state_dict(path_or_mapping)
    config = {**infer_dinov2_config(state_dict), **overrides}
    model = DinoV2(**config)
    return model, convert_dinov2(state_dict, model)


# DinoV2 field -> the config.model key that sets it in a matching / MaCoSNet model (models/backbones.py).
_CONFIG_KEYS = {"embed_dim": "vit_embed_dim", "depth": "vit_depth", "num_registers": "vit_registers",
                "pos_grid": "vit_pos_grid", "ffn": None, "mlp_ratio": None, "layerscale": None}


def encoder_variables(path_or_mapping, encoder: DinoV2) -> dict:
    """{'params', 'batch_stats': {}} of a configured DinoV2 (e.g. a matching model's encoder) from an official
    checkpoint. The checkpoint's architecture must be the encoder's: a ValueError names the config.model keys
    that differ (a partial copy into a differently sized ViT would leave random blocks behind)."""
    state_dict = read_state_dict(path_or_mapping)
    inferred = infer_dinov2_config(state_dict)
    differ = [f"{_CONFIG_KEYS[k] or k}: checkpoint {inferred[k]!r}, model {getattr(encoder, k)!r}"
              for k in _CONFIG_KEYS if inferred[k] != getattr(encoder, k)]
    if differ:
        raise ValueError("DINOv2 checkpoint and the configured encoder differ (set config.model to the "
                         "checkpoint's size):\n  " + "\n  ".join(differ))
    return {"params": convert_dinov2(state_dict, encoder)["params"], "batch_stats": {}}
