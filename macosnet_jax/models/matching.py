"""The two-stage affine → TPS matching model (SPEC §4; weakalign's TwoStageCNNGeometric, MaCoSNet's WeakMatchNet).

Cascade for a pair (A, B) of normalised S×S images:
  1. f = L2-normalised encoder features; C1 = normalize_correlation(correlation(f_A, f_B)) on B's grid;
     θ_aff = G_aff(C1) is the sampling map T_AB (B's frame -> A's frame).
  2. A' = A warped by θ_aff at S×S (the image resolution, not the feature grid).
  3. Second encoder pass on A'; C2 = normalised correlation(f_A', f_B); θ_tps = G_tps(C2).
  4. The final map B -> A is p ↦ Aff(TPS(p)) (geometry.composed_points).

One encoder shared by all passes; two heads with their own weights. Single-example ops are vmapped here.
The joint MaCoSNet model wraps this module and calls `encode`, `regress_affine`, `regress_tps` directly.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from macosnet_jax import correlation as corr_ops
from macosnet_jax import geometry
from macosnet_jax.models import backbones
from macosnet_jax.models.regression import FeatureRegression


def normalized_correlation(features_a, features_b):
    """Raw encoder features (B, h, w, c) x2 -> the normalised correlation (B, h, w, h·w) on B's grid."""
    def one(f_a, f_b):
        f_a = corr_ops.l2_normalize(f_a)
        f_b = corr_ops.l2_normalize(f_b)
        return corr_ops.normalize_correlation(corr_ops.correlation(f_a, f_b))
    return jax.vmap(one)(features_a, features_b)


class MatchingModel(nn.Module):
    """Two-stage affine → TPS matcher.

    Attributes:
      backbone: the encoder family, an entry of models/backbones.py: 'resnet' (the paper) or 'dinov2'.
      depth, last_layer, width: the fields the 'resnet' entry reads (paper: 101, 'layer3', 64).
      vit_embed_dim, vit_depth, vit_heads, vit_registers, vit_pos_grid: the fields the 'dinov2' entry reads
        (default ViT-S/14: 384, 12, 6, 0 registers, the official 37x37 positional grid; patch 14). At 224 px the
        correlation lies on the 16x16 patch grid (256 channels), and the heads' VALID convs (7, 5) leave 6x6.
      image_size: input size S and the size of the stage-2 warp of A (the reference hard-codes 240).
      regression_channels, regression_kernels: FeatureRegression convs.
      init_identity: heads start at the identity transform (from-scratch training); False = reference init.
      update_encoder_batch_stats: encoder BN uses batch statistics in training (SPEC §2: False, frozen).
      update_head_batch_stats: head BN uses batch statistics in training.
      precision: conv/matmul precision for encoder and heads (None = backend default).
    """
    backbone: str = "resnet"
    depth: int = 101
    last_layer: str = "layer3"
    width: int = 64
    vit_embed_dim: int = 384
    vit_depth: int = 12
    vit_heads: int = 6
    vit_registers: int = 0
    vit_pos_grid: int = 37
    image_size: int = 240
    regression_channels: Sequence[int] = (128, 64)
    regression_kernels: Sequence[int] = (7, 5)
    init_identity: bool = False
    update_encoder_batch_stats: bool = False
    update_head_batch_stats: bool = True
    precision: Any = None

    def setup(self):
        self.encoder = backbones.get(self.backbone).make(self.encoder_fields(),
                                                         update_batch_stats=self.update_encoder_batch_stats,
                                                         precision=self.precision)
        head = dict(channels=tuple(self.regression_channels), kernel_sizes=tuple(self.regression_kernels),
                    update_batch_stats=self.update_head_batch_stats, init_identity=self.init_identity,
                    precision=self.precision)
        self.affine_regression = FeatureRegression(output_dim=6, **head)
        self.tps_regression = FeatureRegression(output_dim=18, **head)

    def encoder_fields(self) -> dict:
        """The fields of this model its backbone entry reads."""
        return {"depth": self.depth, "last_layer": self.last_layer, "width": self.width,
                "vit_embed_dim": self.vit_embed_dim, "vit_depth": self.vit_depth, "vit_heads": self.vit_heads,
                "vit_registers": self.vit_registers, "vit_pos_grid": self.vit_pos_grid}

    def encode(self, images, train: bool = False) -> dict:
        """images (B, S, S, 3) normalised -> the encoder's dict: raw 'features' (B, h, w, c) and its levels."""
        return self.encoder(images, train=train)

    def regress_affine(self, corr_norm, train: bool = False):
        """Normalised correlation (B, h, w, h·w) -> θ_aff (B, 6)."""
        return self.affine_regression(corr_norm, train=train)

    def regress_tps(self, corr_norm, train: bool = False):
        """Normalised correlation (B, h, w, h·w) -> θ_tps (B, 18)."""
        return self.tps_regression(corr_norm, train=train)

    def _check_images(self, image_a, image_b):
        expected = (self.image_size, self.image_size, 3)
        for name, image in (("image_a", image_a), ("image_b", image_b)):
            if image.ndim != 4 or tuple(image.shape[1:]) != expected:
                raise ValueError(f"MatchingModel: {name} must be (B, {self.image_size}, {self.image_size}, 3) "
                                 f"normalised images (image_size={self.image_size}); got shape {image.shape}")
        if image_a.shape[0] != image_b.shape[0]:
            raise ValueError(f"MatchingModel: batch sizes differ: {image_a.shape[0]} vs {image_b.shape[0]}")

    def __call__(self, image_a, image_b, train: bool = False) -> dict:
        """The SPEC §4 cascade on (B, S, S, 3) normalised images.

        Returns a dict:
          theta_aff (B, 6), theta_tps (B, 18): final map B -> A is Aff(TPS(p)).
          corr_1, corr_2 (B, h, w, h·w): normalised correlations of (A, B) and (A', B), on B's grid.
          image_a_warped (B, S, S, 3): A warped by θ_aff.
          features_a, features_b, features_a_warped: the encoder dicts (raw 'features' + 'stem'/'layerN' skips).
        """
        self._check_images(image_a, image_b)
        enc_a = self.encode(image_a, train)
        enc_b = self.encode(image_b, train)
        corr_1 = normalized_correlation(enc_a["features"], enc_b["features"])
        theta_aff = self.regress_affine(corr_1, train)

        size = self.image_size
        image_a_warped = jax.vmap(lambda im, th: geometry.warp_affine(im, th, size, size))(image_a, theta_aff)
        enc_aw = self.encode(image_a_warped, train)
        corr_2 = normalized_correlation(enc_aw["features"], enc_b["features"])
        theta_tps = self.regress_tps(corr_2, train)
        return dict(theta_aff=theta_aff, theta_tps=theta_tps, corr_1=corr_1, corr_2=corr_2,
                    image_a_warped=image_a_warped, features_a=enc_a, features_b=enc_b,
                    features_a_warped=enc_aw)


def init_matching_model(model: MatchingModel, rng, batch_size: int = 1) -> dict:
    """Random variables {'params', 'batch_stats'} for `model` (inputs of zeros at its image_size).

    rng: any JAX key. The init runs jitted with an 'rbg' key derived from it: XLA-CPU compiles one threefry
    sampler per parameter tensor, which made a tiny model's init take ~50 s to compile against ~8 s with rbg
    (an eager init is slower still: hundreds of ops dispatched one by one).
    """
    images = jnp.zeros((batch_size, model.image_size, model.image_size, 3), jnp.float32)
    seed = jax.random.bits(rng, (), jnp.uint32)
    fast_key = jax.random.key(seed, impl="rbg")
    return jax.jit(functools.partial(model.init, train=False))(fast_key, images, images)
