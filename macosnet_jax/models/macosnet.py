"""The joint MaCoSNet model: one shared encoder, the affine → TPS matching cascade and the co-segmentation
decoder (SPEC §4–5), with methods that return exactly what the losses of SPEC §6 need.

Variables: {'params': {'matching': MatchingModel's tree, 'decoder': CosegDecoder's tree}, 'batch_stats': the
same two keys}. Weakalign/CNNGeo weights imported for `MatchingModel` therefore drop into 'matching'
unchanged (`with_matching_variables`).

Encoder passes (image-level; the reference's training step spends 9 per triplet: 3 originals + 6 warped):
  triplet: 7 = A, B, C once each + one warped image per cascade AB, BA, BC, CA. The losses need only these
           four directions (matching/cycle/task: AB, BA; transitivity: AB, BC, CA); the reference also runs CB
           and AC, which no loss reads.
  pair:    4 = A, B + the warped images of cascades AB and BA.
  predict: 3 = A, B + A warped by θ_aff (the plain two-stage cascade).
The originals go through the encoder as ONE batched call, the warped images as a second one; the regression
heads and the decoder likewise see all directions / both images in one call. With the encoder's BatchNorm
frozen (SPEC §2) batching changes nothing; the heads' and decoder's training-mode BatchNorm then pools its batch
statistics over all directions (the reference calls them per direction: a small, deliberate difference).

Correlations: C_AB is computed once, raw, from the L2-normalised features; C_BA is its permutation
(correlation.swap_correlation), then both are normalised (ReLU + L2). The decoder of A reads the normalised C_BA
(on A's grid), B's reads C_AB, as in the reference.
"""
from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from macosnet_jax import correlation as corr_ops
from macosnet_jax import geometry
from macosnet_jax.models import backbones
from macosnet_jax.models.decoder import CosegDecoder
from macosnet_jax.models.matching import MatchingModel

ENCODER_PASSES = {"triplet": 7, "pair": 4, "predict": 3}
REFERENCE_ENCODER_PASSES_PER_TRIPLET = 9


def _raw_correlation(features_a: jax.Array, features_b: jax.Array) -> jax.Array:
    """Raw features (B, h, w, c) x2 -> un-normalised C_AB (B, h, w, h·w) of the L2-normalised features."""
    return jax.vmap(lambda fa, fb: corr_ops.correlation(corr_ops.l2_normalize(fa), corr_ops.l2_normalize(fb)))(
        features_a, features_b)


def _split(tree, n: int):
    """Splits every leaf (n·B, ...) of a pytree into n pytrees of (B, ...)."""
    return [jax.tree_util.tree_map(lambda x, i=i: x[i * (x.shape[0] // n):(i + 1) * (x.shape[0] // n)], tree)
            for i in range(n)]


class MaCoSNet(nn.Module):
    """Joint matching + co-segmentation network (SPEC §4–5).

    Fields:
      matching: the MatchingModel (encoder, affine and TPS heads); its encoder is the only encoder.
      decoder: the CosegDecoder; its skips/widths must follow the encoder (see `build_macosnet`).
    """
    matching: MatchingModel
    decoder: CosegDecoder

    def _check(self, *images: jax.Array) -> None:
        size = self.matching.image_size
        for image in images:
            if image.ndim != 4 or tuple(image.shape[1:]) != (size, size, 3):
                raise ValueError(f"MaCoSNet: images must be (B, {size}, {size}, 3) normalised (image_size={size});"
                                 f" got {image.shape}")
        if len({image.shape[0] for image in images}) != 1:
            raise ValueError(f"MaCoSNet: batch sizes differ: {[image.shape[0] for image in images]}")

    def _cascades(self, sources: Sequence[jax.Array], corr_1: Sequence[jax.Array],
                  target_features: Sequence[jax.Array], train: bool):
        """Stage 2 for several directions XY at once (map Y -> X; X is warped).

        sources: images X (B, S, S, 3); corr_1: normalised stage-1 C_XY (B, h, w, h·w) on Y's grid;
        target_features: raw features of Y. Returns lists of θ_aff (B, 6), θ_tps (B, 18).
        One head call, one encoder call (len(sources)·B warped images), one head call.
        """
        n = len(sources)
        theta_aff = self.matching.regress_affine(jnp.concatenate(corr_1), train)
        size = self.matching.image_size
        warped = jax.vmap(lambda im, th: geometry.warp_affine(im, th, size, size))(
            jnp.concatenate(sources), theta_aff)
        warped_features = self.matching.encode(warped, train)["features"]
        corr_2 = jax.vmap(corr_ops.normalize_correlation)(
            _raw_correlation(warped_features, jnp.concatenate(target_features)))
        theta_tps = self.matching.regress_tps(corr_2, train)
        return _split(theta_aff, n), _split(theta_tps, n)

    def _masks(self, encodings: Sequence[dict], own_grid_corr: Sequence[jax.Array], train: bool) -> list:
        """Decoder logits (B, S, S) for several images in one call; own_grid_corr normalised, on each image's grid."""
        skips = {name: jnp.concatenate([e[name] for e in encodings]) for name in self.decoder.skips}
        logits = self.decoder(jnp.concatenate([e["features"] for e in encodings]),
                              jnp.concatenate(own_grid_corr), skips, train)
        return _split(logits[..., 0], len(encodings))

    def _encode_all(self, images: Sequence[jax.Array], train: bool) -> list:
        return _split(self.matching.encode(jnp.concatenate(images), train), len(images))

    def pair(self, image_a: jax.Array, image_b: jax.Array, train: bool = False) -> dict:
        """Everything the pair losses need (no transitivity), 4 encoder passes.

        image_a, image_b: (B, S, S, 3) normalised. Returns
          theta_aff {'ab', 'ba'}: (B, 6); theta_tps {'ab', 'ba'}: (B, 18) (T_AB: B -> A, cascade Aff(TPS(·)));
          corr {'ab', 'ba'}: normalised stage-1 correlations (B, h, w, h·w) (C_AB on B's grid, C_BA on A's);
          mask_logits {'a', 'b'}: (B, S, S).
        """
        self._check(image_a, image_b)
        enc_a, enc_b = self._encode_all([image_a, image_b], train)
        raw_ab = _raw_correlation(enc_a["features"], enc_b["features"])
        corr_ab = jax.vmap(corr_ops.normalize_correlation)(raw_ab)
        corr_ba = jax.vmap(corr_ops.normalize_correlation)(jax.vmap(corr_ops.swap_correlation)(raw_ab))
        (aff_ab, aff_ba), (tps_ab, tps_ba) = self._cascades(
            [image_a, image_b], [corr_ab, corr_ba], [enc_b["features"], enc_a["features"]], train)
        logits_a, logits_b = self._masks([enc_a, enc_b], [corr_ba, corr_ab], train)
        return {"theta_aff": {"ab": aff_ab, "ba": aff_ba}, "theta_tps": {"ab": tps_ab, "ba": tps_ba},
                "corr": {"ab": corr_ab, "ba": corr_ba}, "mask_logits": {"a": logits_a, "b": logits_b}}

    def triplet(self, image_a: jax.Array, image_b: jax.Array, image_c: jax.Array, train: bool = False) -> dict:
        """Everything the full objective needs for a triplet (A, B, C), 7 encoder passes.

        As `pair`, plus theta_aff / theta_tps for 'bc' (T_BC: C -> B) and 'ca' (T_CA: A -> C). C needs no mask
        (no loss reads it), so the decoder runs on A and B only.
        """
        self._check(image_a, image_b, image_c)
        enc_a, enc_b, enc_c = self._encode_all([image_a, image_b, image_c], train)
        raw_ab = _raw_correlation(enc_a["features"], enc_b["features"])
        norm = jax.vmap(corr_ops.normalize_correlation)
        corr_ab = norm(raw_ab)
        corr_ba = norm(jax.vmap(corr_ops.swap_correlation)(raw_ab))
        corr_bc = norm(_raw_correlation(enc_b["features"], enc_c["features"]))  # on C's grid, for T_BC
        corr_ca = norm(_raw_correlation(enc_c["features"], enc_a["features"]))  # on A's grid, for T_CA
        affs, tpss = self._cascades(
            [image_a, image_b, image_b, image_c], [corr_ab, corr_ba, corr_bc, corr_ca],
            [enc_b["features"], enc_a["features"], enc_c["features"], enc_a["features"]], train)
        logits_a, logits_b = self._masks([enc_a, enc_b], [corr_ba, corr_ab], train)
        keys = ("ab", "ba", "bc", "ca")
        return {"theta_aff": dict(zip(keys, affs)), "theta_tps": dict(zip(keys, tpss)),
                "corr": {"ab": corr_ab, "ba": corr_ba, "ca": corr_ca}, "mask_logits": {"a": logits_a, "b": logits_b}}

    def predict(self, image_a: jax.Array, image_b: jax.Array) -> dict:
        """Inference (eval-mode BatchNorm), 3 encoder passes: θ_aff (B, 6), θ_tps (B, 18) of T_AB (final map
        B -> A is Aff(TPS(p))), and both masks: mask_a, mask_b (B, S, S) probabilities, mask_logits_a/_b."""
        self._check(image_a, image_b)
        enc_a, enc_b = self._encode_all([image_a, image_b], False)
        raw_ab = _raw_correlation(enc_a["features"], enc_b["features"])
        corr_ab = jax.vmap(corr_ops.normalize_correlation)(raw_ab)
        corr_ba = jax.vmap(corr_ops.normalize_correlation)(jax.vmap(corr_ops.swap_correlation)(raw_ab))
        (aff,), (tps,) = self._cascades([image_a], [corr_ab], [enc_b["features"]], False)
        logits_a, logits_b = self._masks([enc_a, enc_b], [corr_ba, corr_ab], False)
        return {"theta_aff": aff, "theta_tps": tps, "mask_a": jax.nn.sigmoid(logits_a),
                "mask_b": jax.nn.sigmoid(logits_b), "mask_logits_a": logits_a, "mask_logits_b": logits_b}

    def __call__(self, image_a: jax.Array, image_b: jax.Array, train: bool = False) -> dict:
        """Alias of `pair` (used by `init`)."""
        return self.pair(image_a, image_b, train)


def build_macosnet(depth: int = 101, last_layer: str = "layer3", width: int = 64, image_size: int = 240,
                   **matching_kwargs) -> MaCoSNet:
    """MaCoSNet whose decoder follows the encoder: skips and widths from the backbone entry, logits at image_size.

    matching_kwargs go to MatchingModel (backbone, regression_channels, regression_kernels, init_identity, ...).
    """
    matching = MatchingModel(depth=depth, last_layer=last_layer, width=width, image_size=image_size,
                             **matching_kwargs)
    backbone = backbones.get(matching.backbone)
    fields = matching.encoder_fields()
    decoder = CosegDecoder(widths=backbone.decoder_stage_widths(fields), skips=backbone.skips(fields),
                           output_size=image_size, precision=matching_kwargs.get("precision"))
    return MaCoSNet(matching=matching, decoder=decoder)


def init_macosnet(model: MaCoSNet, rng: jax.Array, batch_size: int = 1) -> dict:
    """Random variables {'params', 'batch_stats'} of `model` (zero images at its image_size).

    Tip: on CPU pass a `jax.random.key(seed, impl='rbg')`: with threefry keys XLA compiles every parameter's
    unrolled random rounds, and the init of even a thin ResNet takes ~10x longer to compile (measured 83 s vs 5 s).
    """
    size = model.matching.image_size
    images = jnp.zeros((batch_size, size, size, 3), jnp.float32)
    # Jitted: an eager init dispatches every op of the encoder one by one (minutes on a small CPU).
    return jax.jit(functools.partial(model.init, train=False))(rng, images, images)


def with_matching_variables(variables: dict, matching_variables: dict) -> dict:
    """Replaces the 'matching' subtree of every collection by `matching_variables` (e.g. imported weakalign
    weights for MatchingModel), keeping the decoder's. Raises if a collection is missing."""
    out = {}
    for collection, tree in variables.items():
        tree = dict(tree)
        if collection in matching_variables:
            tree["matching"] = matching_variables[collection]
        out[collection] = tree
    missing = set(matching_variables) - set(variables)
    if missing:
        raise KeyError(f"with_matching_variables: collections {sorted(missing)} are not in the model's variables "
                       f"{sorted(variables)}")
    return out
