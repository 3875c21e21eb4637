"""Strong stage (CNNGeo, SPEC §7.1): synthetic warps with known θ, grid loss; affine and TPS heads trained together."""
from __future__ import annotations

from typing import Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from macosnet_jax import losses
from macosnet_jax.data.batches import StrongBatch
from macosnet_jax.models.factory import matching_model
from macosnet_jax.models.matching import MatchingModel, normalized_correlation
from macosnet_jax.stage_api import Stage, register_stage
from macosnet_jax.stages.inputs import image_source, normalize, pair_model_init, torch_loader


def _strong_forward(module: MatchingModel, batch: StrongBatch, train: bool):
    """θ_aff for the affine pairs and θ_tps for the TPS pairs, with ONE encoder call on all four image sets."""
    names = ("affine_image_a", "affine_image_b", "tps_image_a", "tps_image_b")
    images = jnp.concatenate([normalize(batch[n]) for n in names], axis=0)
    features = jnp.split(module.encode(images, train)["features"], 4, axis=0)
    theta_aff = module.regress_affine(normalized_correlation(features[0], features[1]), train)
    theta_tps = module.regress_tps(normalized_correlation(features[2], features[3]), train)
    return theta_aff, theta_tps


def strong_loss(module: MatchingModel, params, batch_stats, batch: StrongBatch, train: bool = True):
    """Grid loss of the affine head on affine pairs plus the TPS head on TPS pairs (SPEC §6.7)."""
    (theta_aff, theta_tps), mutated = nn.apply(_strong_forward, module, mutable=["batch_stats"])(
        {"params": params, "batch_stats": batch_stats}, batch, train)
    loss_aff = jnp.mean(jax.vmap(lambda p, t: losses.grid_loss(p, t, "affine"))(theta_aff, batch["affine_theta"]))
    loss_tps = jnp.mean(jax.vmap(lambda p, t: losses.grid_loss(p, t, "tps"))(theta_tps, batch["tps_theta"]))
    return loss_aff + loss_tps, (mutated["batch_stats"], {"grid_affine": loss_aff, "grid_tps": loss_tps})


def _zip_warp_iterators(source, config, start_step, process_index, process_count) -> Iterator[StrongBatch]:
    from macosnet_jax.data import warps
    per_process = config.batch_size // process_count
    common = dict(batch_size=per_process, image_size=config.image_size, start_step=start_step,
                  process_index=process_index, process_count=process_count)
    streams = {kind: warps.make_warp_iterator(source, seed=config.seed + offset, kind=kind, **common)
               for kind, offset in (("affine", 0), ("tps", 7919))}
    while True:
        batch = {}
        for kind, stream in streams.items():
            pairs = next(stream)
            batch.update({f"{kind}_{k}": pairs[k] for k in ("image_a", "image_b", "theta")})
        yield batch


@register_stage("strong_synthetic")
def strong_synthetic(config: ml_collections.ConfigDict) -> Stage:
    """CNNGeo's strong stage on synthetic warps of config.data's images."""
    model = matching_model(config)

    init_fn = pair_model_init(model, config.image_size)

    def loss_fn(params, batch_stats, frozen, batch, rng):
        del frozen, rng
        return strong_loss(model, params, batch_stats, batch)

    def make_iterator(start_step, process_index, process_count):
        source = image_source(config.data, config.image_size)
        return _zip_warp_iterators(source, config, start_step, process_index, process_count)

    return Stage(init_fn=init_fn, loss_fn=loss_fn, make_iterator=make_iterator, model=model,
                 name="strong_synthetic", load_torch=torch_loader(config))
