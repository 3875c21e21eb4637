"""FeatureRegression: the head that turns a normalised correlation volume into transformation parameters θ.

SPEC §4 (weakalign/CNNGeo's FeatureRegression): conv 225→128 k7 VALID + BN + ReLU → conv 128→64 k5 VALID + BN
+ ReLU → flatten → Dense(D), D = 6 (affine) or 18 (TPS). Input (B, h, w, h·w) NHWC; the flatten is in NHWC order
(H, W, C). Torch flattens (C, H, W): weights.py permutes the imported Dense kernel, so the model stays NHWC.

Submodule names `conv{j}`, `bn{j}`, `linear` map to torch `conv.{3j}`, `conv.{3j+1}`, `linear`.
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
            x = nn.Conv(features, (kernel, kernel), padding="VALID", precision=self.precision, name=f"conv{j}")(x)
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
