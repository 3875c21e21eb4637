"""Co-segmentation decoder D of MaCoSNet (SPEC §5).

The decoder turns, for one image, the concatenation of its raw last-layer encoder features and the
normalised correlation that lies on its own grid (for A: C_BA) into mask logits at the input resolution.
It is a chain of stride-2 transposed convolutions (kernel 3, PyTorch padding 1 / output_padding 1, so each
exactly doubles the size), no bias, BatchNorm + ReLU after all but the last, with encoder skips ADDED (not
concatenated) before each following transposed conv:

    ResNet cut at layer3 (stride 16, the paper):  deconv1 -> +layer2 -> deconv2 -> +layer1 -> deconv3
                                                  -> +stem -> deconv4 -> logits (S x S)

How the depth adapts to the cut layer: the skips are the encoder outputs *above* the cut, from the deepest
to the shallowest, as the encoder's entry in models/backbones.py lists them (`decoder_skip_names`):
layer3 -> (layer2, layer1, stem); layer2 -> (layer1, stem); layer1 -> (stem,); layer4 -> (layer3, layer2, layer1,
stem). The stem output (before max-pool) has stride 2 and every later layer doubles the stride (the max-pool
halves between stem and layer1), so the cut layer has stride 2^(len(skips)+1) and `len(skips) + 1` doublings bring it back to the input size. Each stage's width
equals the channel count of the skip it is added to (the entry's levels, `decoder_widths`), so thin ResNets work
too; the last stage has one output channel.

An encoder without a pyramid (the DINOv2 ViT, stride 14) has no skips: its entry gives the stage widths
(`Backbone.decoder_widths`), the stages past the skips add nothing, and since 14·2^n never equals the image
size, the logits are resized (bilinear) to `output_size` x `output_size` at the end.

Initialisation (reference): every 3x3 kernel slice is the bilinear-upsampling kernel
outer([.5, 1, .5], [.5, 1, .5]) / C_in, so at init each stage upsamples the channel mean bilinearly.

Kernel layout: the Flax parameter `kernel` (3, 3, C_in, C_out) is the kernel of the equivalent lhs-dilated
*correlation* (what `lax.conv_general_dilated` computes). A PyTorch ConvTranspose2d weight (C_in, C_out, kh,
kw) is the scatter kernel; the two differ by a spatial flip, which the weight import applies
(`weights.decoder_variables_from_torch`); the model code never flips anything.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from macosnet_jax.models import backbones

def decoder_skip_names(last_layer: str, backbone: str = "resnet") -> tuple[str, ...]:
    """Skip names added after each upsampling stage, deepest first, for an encoder cut at `last_layer`."""
    return backbones.get(backbone).skips({"last_layer": last_layer})


def encoder_channels(depth: int, width: int = 64) -> dict[str, int]:
    """Channel counts of the torchvision-layout ResNet outputs ('stem', 'layer1'..'layer4')."""
    levels = backbones.RESNET.levels({"depth": depth, "last_layer": "layer4", "width": width})
    return {name: level.channels for name, level in levels.items()}


def decoder_widths(depth: int, last_layer: str, width: int = 64, backbone: str = "resnet") -> tuple[int, ...]:
    """Output widths of the upsampling stages before the last: the channels of the skips they meet (the entry's
    `decoder_stage_widths`)."""
    return backbones.get(backbone).decoder_stage_widths({"depth": depth, "last_layer": last_layer, "width": width})


def bilinear_kernel_init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
    """Every 3x3 slice = outer([.5, 1, .5], [.5, 1, .5]) / C_in; shape (3, 3, C_in, C_out). `key` unused."""
    del key
    kh, kw, c_in, c_out = shape
    if (kh, kw) != (3, 3):
        raise ValueError(f"bilinear_kernel_init: expected a 3x3 kernel, got {kh}x{kw}")
    tap = np.array([0.5, 1.0, 0.5])
    kernel = np.outer(tap, tap) / c_in
    return jnp.asarray(np.broadcast_to(kernel[:, :, None, None], (3, 3, c_in, c_out)), dtype)


def conv_transpose_2x(x: jax.Array, kernel: jax.Array, precision: Any = None) -> jax.Array:
    """Stride-2 transposed conv with torch padding 1 / output_padding 1: (B, h, w, Ci) -> (B, 2h, 2w, Co).

    `kernel` (3, 3, Ci, Co) is the kernel of the equivalent correlation over the input dilated by 2 (zeros
    between samples) and padded by k-1-p = 1 before and k-1-p+output_padding = 2 after, i.e.
    `lax.conv_general_dilated(x, kernel, (1, 1), ((1, 2), (1, 2)), lhs_dilation=(2, 2))` (`conv_transpose_2x_dilated`).
    Computed here without the zeros, one output phase at a time (sub-pixel form): per axis, output 2n is
    x[n]·k[1] and output 2n + 1 is x[n]·k[0] + x[n + 1]·k[2] (x[h] = 0), so each of the four phases (B, h, w, Co)
    is one matrix product of the input's 1, 2, 2 or 4 shifted copies with the matching taps; the phases
    interleave into the output. Same numbers up to float round-off; XLA CPU differentiates these matrix products
    several times faster than the dilated convolution (whose kernel gradient it runs as a slow dilated conv).
    """
    b, h, w, _ = x.shape
    xp = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
    shifted = {(di, dj): xp[:, di:di + h, dj:dj + w, :] for di in (0, 1) for dj in (0, 1)}
    # Per axis, output phase a reads (input offset, kernel tap): phase 0 -> (0, 1); phase 1 -> (0, 0), (1, 2).
    reads = {0: ((0, 1),), 1: ((0, 0), (1, 2))}
    phases = []
    for a in (0, 1):
        for c in (0, 1):
            pairs = [((di, dj), (ki, kj)) for di, ki in reads[a] for dj, kj in reads[c]]
            inputs = jnp.concatenate([shifted[d] for d, _ in pairs], axis=-1)
            taps = jnp.concatenate([kernel[ki, kj] for _, (ki, kj) in pairs], axis=0)
            phases.append(jnp.einsum("bhwc,cf->bhwf", inputs, taps, precision=precision))
    out = jnp.stack(phases, axis=3).reshape(b, h, w, 2, 2, -1)  # (B, h, w, a, c, Co)
    return out.transpose(0, 1, 3, 2, 4, 5).reshape(b, 2 * h, 2 * w, -1)


def conv_transpose_2x_dilated(x: jax.Array, kernel: jax.Array, precision: Any = None) -> jax.Array:
    """`conv_transpose_2x` as the lhs-dilated correlation it equals (the definition; tests and benchmarks)."""
    return jax.lax.conv_general_dilated(
        x, kernel, window_strides=(1, 1), padding=((1, 2), (1, 2)), lhs_dilation=(2, 2),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=precision)


class ConvTranspose2x(nn.Module):
    """One stride-2, kernel-3 transposed conv without bias, bilinear-initialised (see module docstring)."""
    features: int
    precision: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", bilinear_kernel_init, (3, 3, x.shape[-1], self.features))
        return conv_transpose_2x(x, kernel.astype(x.dtype), self.precision)


class CosegDecoder(nn.Module):
    """Mask logits from [raw last-layer features, correlation on the image's own grid] plus encoder skips.

    Fields:
      widths: output channels of every stage but the last (default: ResNet-101 cut at layer3, one per skip).
      skips: encoder output names added after the first len(skips) stages, deepest first
        (`decoder_skip_names(last_layer)`); the stages past them add no skip (() for a ViT).
      output_size: the logits' side; 0 keeps the transposed convs' size (h·2^n), otherwise a bilinear resize to
        output_size x output_size follows when the sizes differ (a stride-14 ViT grid).
      bn_momentum, bn_epsilon: BatchNorm (torch momentum 0.1 == Flax momentum 0.9; eps 1e-5).
      precision: passed to the convolutions (None: backend default; 'highest' for parity on accelerators).
    Submodule names follow the reference (`deconv1..N`, `bn1..N-1`) so torch weights map one to one.
    """
    widths: Sequence[int] = (512, 256, 64)
    skips: Sequence[str] = ("layer2", "layer1", "stem")
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    output_size: int = 0
    precision: Any = None

    @nn.compact
    def __call__(self, features: jax.Array, corr: jax.Array, skip_features: Mapping[str, jax.Array],
                 train: bool) -> jax.Array:
        """features (B, h, w, C) raw, corr (B, h, w, h·w) normalised on this image's grid,
        skip_features[name] (B, h·2^i, w·2^i, widths[i-1]) for the i-th skip -> logits (B, h·2^n, w·2^n, 1),
        n = len(widths) + 1 (or (B, output_size, output_size, 1)). BatchNorm uses batch statistics when `train`
        (the decoder trains from scratch).
        """
        if len(self.widths) < len(self.skips):
            raise ValueError(f"CosegDecoder: {len(self.widths)} widths for {len(self.skips)} skips "
                             f"({self.skips}); give at least one width per skip")
        if features.shape[:3] != corr.shape[:3]:
            raise ValueError(f"CosegDecoder: features {features.shape} and correlation {corr.shape} must share "
                             "(batch, h, w)")
        x = jnp.concatenate([features, corr], axis=-1)
        names = tuple(self.skips) + (None,) * (len(self.widths) - len(self.skips))
        for i, (name, width) in enumerate(zip(names, self.widths), start=1):
            x = ConvTranspose2x(width, self.precision, name=f"deconv{i}")(x)
            x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                             epsilon=self.bn_epsilon, name=f"bn{i}")(x)
            x = nn.relu(x)
            if name is None:
                continue
            if name not in skip_features:
                raise KeyError(f"CosegDecoder: missing skip {name!r}; got {sorted(skip_features)}")
            skip = skip_features[name]
            if skip.shape != x.shape:
                raise ValueError(f"CosegDecoder: skip {name!r} has shape {skip.shape}, the decoder stage {i} "
                                 f"gives {x.shape}; set widths/skips to the encoder's (decoder_widths)")
            x = x + skip
        logits = ConvTranspose2x(1, self.precision, name=f"deconv{len(self.widths) + 1}")(x)
        if self.output_size and logits.shape[1:3] != (self.output_size, self.output_size):
            logits = jax.image.resize(logits, (logits.shape[0], self.output_size, self.output_size, 1), "bilinear")
        return logits
