"""The reference's torch Decoder weights -> Flax variables of `models.decoder.CosegDecoder`.

A PyTorch ConvTranspose2d weight (C_in, C_out, kh, kw) is the scatter kernel; the Flax `kernel` (3, 3, C_in,
C_out) is the kernel of the equivalent lhs-dilated correlation, so both spatial axes are flipped here (the model
code never flips anything). BatchNorm weight/bias -> scale/bias, running_mean/var -> mean/var.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np


def decoder_variables_from_torch(state_dict: Mapping[str, Any], prefix: str = "Decoder.",
                                 num_stages: int = 4) -> dict:
    """Flax variables {'params', 'batch_stats'} of `CosegDecoder` from the reference's torch Decoder weights.

    state_dict: name -> array-like (numpy or torch tensors converted by the caller), keys
      `{prefix}deconv{i}.weight` (C_in, C_out, 3, 3) for i = 1..num_stages and
      `{prefix}bn{i}.{weight,bias,running_mean,running_var}` for i = 1..num_stages-1.
    The ConvTranspose weight becomes (3, 3, C_in, C_out) with both spatial axes flipped (scatter kernel ->
    correlation kernel of the lhs-dilated conv).
    """
    def get(key: str) -> np.ndarray:
        full = prefix + key
        if full not in state_dict:
            raise KeyError(f"decoder weights: missing {full!r} (have {len(state_dict)} keys, e.g. "
                           f"{sorted(state_dict)[:3]})")
        return np.asarray(state_dict[full], dtype=np.float32)

    params: dict = {}
    stats: dict = {}
    for i in range(1, num_stages + 1):
        w = get(f"deconv{i}.weight")
        if w.ndim != 4 or w.shape[2:] != (3, 3):
            raise ValueError(f"decoder weights: {prefix}deconv{i}.weight has shape {w.shape}, expected "
                             "(C_in, C_out, 3, 3)")
        params[f"deconv{i}"] = {"kernel": jnp.asarray(w.transpose(2, 3, 0, 1)[::-1, ::-1])}
        if i < num_stages:
            params[f"bn{i}"] = {"scale": jnp.asarray(get(f"bn{i}.weight")), "bias": jnp.asarray(get(f"bn{i}.bias"))}
            stats[f"bn{i}"] = {"mean": jnp.asarray(get(f"bn{i}.running_mean")),
                               "var": jnp.asarray(get(f"bn{i}.running_var"))}
    return {"params": params, "batch_stats": stats}
