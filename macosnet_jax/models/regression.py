"""FeatureRegression: the head that turns a normalised correlation volume into transformation parameters θ.

SPEC §4 (weakalign/CNNGeo's FeatureRegression): conv 225→128 k7 VALID + BN + ReLU → conv 128→64 k5 VALID + BN
+ ReLU → flatten → Dense(D), D = 6 (affine) or 18 (TPS). Input (B, h, w, h·w) NHWC; the flatten is in NHWC order
(H, W, C). Torch flattens (C, H, W): the weight import (weights.convert) permutes the imported Dense kernel, so
the model stays NHWC.

Submodule names `conv{j}`, `bn{j}`, `linear` map to torch `conv.{3j}`, `conv.{3j+1}`, `linear`.

The VALID convs run as patches × matrix (`valid_conv`): the k·k shifted windows of the input, concatenated on
channels, times the kernel reshaped to (k·k·C_in, C_out). Same parameters as `nn.Conv` (kernel (k, k, C_in, C_out),
bias (C_out,)) and the same numbers up to float round-off. XLA CPU runs the backward of the 7×7 conv over the
demo's 12×12 correlation (144 -> 128) at a few GFLOP/s as a convolution; as one matrix product the demo's strong
step takes about half the time (`python benchmarks/bench_steps.py --scale demo`).
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from macosnet_jax import geometry
from macosnet_jax.models.resnet import BN_EPSILON, BN_MOMENTUM


def identity_theta(output_dim: int) -> np.ndarray:
    """The identity transformation parameters: (6,) affine or (18,) TPS."""
    if output_dim == 6:
        return geometry.IDENTITY_AFFINE
    if output_dim == 18:
        return geometry.IDENTITY_TPS
    raise ValueError(f"output_dim must be 6 (affine) or 18 (TPS), got {output_dim}")


def valid_conv(x, kernel, precision: Any = None):
    """Stride-1 VALID convolution as one matrix product: x (B, H, W, C), kernel (k, k, C, F) -> (B, H-k+1, W-k+1, F).

    Cross-correlation like `nn.Conv` / torch `Conv2d`: out[b, y, x] = Σ_{i,j,c} x[b, y+i, x+j, c] · kernel[i, j, c].
    """
    k = kernel.shape[0]
    out_h, out_w = x.shape[1] - k + 1, x.shape[2] - k + 1
    patches = jnp.concatenate([x[:, i:i + out_h, j:j + out_w, :] for i in range(k) for j in range(k)], axis=-1)
    return jnp.einsum("bhwp,pf->bhwf", patches, kernel.reshape(-1, kernel.shape[-1]), precision=precision)


class ValidConv(nn.Module):
    """`nn.Conv(features, (k, k), padding='VALID')` with the same parameters, computed by `valid_conv`."""
    features: int
    kernel_size: int
    precision: Any = None

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.initializers.lecun_normal(),
                            (self.kernel_size, self.kernel_size, x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
        return valid_conv(x, kernel, self.precision) + bias


class FeatureRegression(nn.Module):
    """Correlation (B, h, w, h·w) -> θ (B, output_dim).

    Attributes:
      output_dim: 6 (affine) or 18 (TPS).
      channels, kernel_sizes: the VALID convs (reference: (128, 64), (7, 5): 15 -> 9 -> 5, 1600 features).
      update_batch_stats: BN uses batch statistics iff this and `train` are true (the heads train their BN).
      init_identity: zero final kernel and identity bias, so an untrained head predicts the identity (for
        from-scratch training). False keeps the reference's init (θ is the plain linear output).
    """
    output_dim: int = 6
    channels: Sequence[int] = (128, 64)
    kernel_sizes: Sequence[int] = (7, 5)
    update_batch_stats: bool = True
    init_identity: bool = False
    precision: Any = None

    @nn.compact
    def __call__(self, corr, train: bool = False):
        if corr.ndim != 4:
            raise ValueError(f"FeatureRegression expects a correlation (B, h, w, h*w), got shape {corr.shape}")
        if len(self.channels) != len(self.kernel_sizes):
            raise ValueError(f"channels {self.channels} and kernel_sizes {self.kernel_sizes} differ in length")
        use_running_average = not (train and self.update_batch_stats)
        x = corr
        for j, (features, kernel) in enumerate(zip(self.channels, self.kernel_sizes)):
            if x.shape[1] < kernel or x.shape[2] < kernel:
                raise ValueError(f"FeatureRegression: conv{j} (kernel {kernel}, VALID) needs a grid of at least "
                                 f"{kernel}x{kernel}, got {x.shape[1]}x{x.shape[2]} (correlation {corr.shape}); "
                                 "the reference heads expect a 15x15 feature grid (image size 240 at stride 16)")
            x = ValidConv(features, kernel, precision=self.precision, name=f"conv{j}")(x)
            x = nn.BatchNorm(use_running_average=use_running_average, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                             name=f"bn{j}")(x)
            x = nn.relu(x)
        self.sow("intermediates", "conv_out", x)
        x = x.reshape(x.shape[0], -1)  # NHWC flatten (H, W, C)
        if self.init_identity:
            identity = jnp.asarray(identity_theta(self.output_dim))
            dense = nn.Dense(self.output_dim, kernel_init=nn.initializers.zeros,
                             bias_init=lambda *_: identity, precision=self.precision, name="linear")
        else:
            dense = nn.Dense(self.output_dim, precision=self.precision, name="linear")
        return dense(x)
