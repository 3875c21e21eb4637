"""The training stages of SPEC §7 as `train.Stage`s: strong synthetic (CNNGeo), weak (weakalign), joint (MaCoSNet).

A stage ties a model, its loss and its data to the generic, data-parallel loop of `train.py`. Each is registered by
name (`config.stage`), and reads:
  config.image_size, config.model (MatchingModel fields: depth, last_layer, width, ...), config.data (the image
  source: `name` = 'synthetic_objects' with num_images / num_categories / seed, or a tfds dataset), config.losses
  (λ per term and the loss options) for the joint stage.
Images travel as uint8 and are normalised inside the jitted step (a quarter of the host->device bytes).
"""
from __future__ import annotations

import functools
from typing import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from macosnet_jax import geometry, losses
from macosnet_jax.models.factory import macosnet_model, matching_model, perceptual_network
from macosnet_jax.models.matching import MatchingModel, normalized_correlation
from macosnet_jax.train import Stage, register_stage


# ------------------------------------------------------------------------------------------------------------
# Data sources.


@functools.lru_cache(maxsize=4)
def _synthetic_objects(num_images: int, size: int, seed: int, num_categories: int) -> dict:
    from macosnet_jax.data import synthetic
    return synthetic.make_synthetic_objects(num_images, size, seed, num_categories)


def image_source(data: ml_collections.ConfigDict, image_size: int) -> dict:
    """The training image set named by config.data, in memory (dict of numpy arrays)."""
    if data.name == "synthetic_objects":
        return _synthetic_objects(int(data.num_images), int(image_size), int(data.seed), int(data.num_categories))
    if data.name == "image_folder":
        from macosnet_jax.data import warps
        return {"image": warps.load_image_folder(data.path, image_size)}
    if data.name == "tfds":
        import tensorflow_datasets as tfds
        return tfds.load(data.tfds_name, split=data.split, data_dir=data.get("data_dir", None) or None)
    raise ValueError(f"config.data.name='{data.name}' is unknown; expected synthetic_objects, image_folder or tfds")


def _normalize(images):
    return geometry.normalize_image(images)


def fast_init_key(rng):
    """An 'rbg' key derived from `rng`: XLA-CPU compiles one threefry sampler per parameter tensor, which made a
    tiny model's init take ~50 s to compile against ~8 s with rbg (see models.matching.init_matching_model)."""
    return jax.random.key(jax.random.bits(rng, (), jnp.uint32), impl="rbg")


# ------------------------------------------------------------------------------------------------------------
# Strong stage (CNNGeo): synthetic warps with known θ, grid loss; affine and TPS heads trained together.


def _strong_forward(module: MatchingModel, batch: Mapping[str, jax.Array], train: bool):
    """θ_aff for the affine pairs and θ_tps for the TPS pairs, with ONE encoder call on all four image sets."""
    names = ("affine_image_a", "affine_image_b", "tps_image_a", "tps_image_b")
    images = jnp.concatenate([_normalize(batch[n]) for n in names], axis=0)
    features = jnp.split(module.encode(images, train)["features"], 4, axis=0)
    theta_aff = module.regress_affine(normalized_correlation(features[0], features[1]), train)
    theta_tps = module.regress_tps(normalized_correlation(features[2], features[3]), train)
    return theta_aff, theta_tps


def strong_loss(module: MatchingModel, params, batch_stats, batch, train: bool = True):
    """Grid loss of the affine head on affine pairs plus the TPS head on TPS pairs (SPEC §6.7)."""
    (theta_aff, theta_tps), mutated = nn.apply(_strong_forward, module, mutable=["batch_stats"])(
        {"params": params, "batch_stats": batch_stats}, batch, train)
    loss_aff = jnp.mean(jax.vmap(lambda p, t: losses.grid_loss(p, t, "affine"))(theta_aff, batch["affine_theta"]))
    loss_tps = jnp.mean(jax.vmap(lambda p, t: losses.grid_loss(p, t, "tps"))(theta_tps, batch["tps_theta"]))
    return loss_aff + loss_tps, (mutated["batch_stats"], {"grid_affine": loss_aff, "grid_tps": loss_tps})


def _zip_warp_iterators(source, config, start_step, process_index, process_count):
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


def _pair_model_init(model, image_size):
    """init_fn of a model called on (image_a, image_b): rng -> {'params', 'batch_stats'}."""
    def init_fn(rng):
        images = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
        return model.init(fast_init_key(rng), images, images, train=False)
    return init_fn


@register_stage("strong_synthetic")
def strong_synthetic(config: ml_collections.ConfigDict) -> Stage:
    """CNNGeo's strong stage on synthetic warps of config.data's images."""
    model = matching_model(config)

    init_fn = _pair_model_init(model, config.image_size)

    def loss_fn(params, batch_stats, frozen, batch, rng):
        del frozen, rng
        return strong_loss(model, params, batch_stats, batch)

    def make_iterator(start_step, process_index, process_count):
        source = image_source(config.data, config.image_size)
        return _zip_warp_iterators(source, config, start_step, process_index, process_count)

    return Stage(init_fn=init_fn, loss_fn=loss_fn, make_iterator=make_iterator, model=model,
                 name="strong_synthetic")


# ------------------------------------------------------------------------------------------------------------
# Weak stage (weakalign): pairs of one category, L = -(score_aff + score_composed) on the stage-1 correlation.


def weak_loss(model: MatchingModel, options: losses.LossOptions, params, batch_stats, batch):
    """weakalign's loss: the mean over pairs of -(affine inlier score + composed inlier score), fg weight 'none'.

    options: the inlier score's options (`LossOptions.score_kwargs`); the weights and fg options are not read.
    """
    score_kwargs = options.score_kwargs()
    outputs, mutated = model.apply({"params": params, "batch_stats": batch_stats}, _normalize(batch["image_a"]),
                                   _normalize(batch["image_b"]), train=True, mutable=["batch_stats"])
    score_aff = jax.vmap(lambda c, a: losses.inlier_score(c, a, **score_kwargs))(outputs["corr_1"], outputs["theta_aff"])
    score_comp = jax.vmap(lambda c, a, t: losses.inlier_score(c, a, t, **score_kwargs))(
        outputs["corr_1"], outputs["theta_aff"], outputs["theta_tps"])
    loss = -jnp.mean(score_aff + score_comp)
    return loss, (mutated["batch_stats"], {"score_aff": jnp.mean(score_aff), "score_comp": jnp.mean(score_comp)})


def _pair_iterator(config, triplets):
    def make_iterator(start_step, process_index, process_count):
        from macosnet_jax.data import pipeline
        source = image_source(config.data, config.image_size)
        return pipeline.make_pair_iterator(
            source, batch_size=config.batch_size // process_count, image_size=config.image_size, seed=config.seed,
            start_step=start_step, process_index=process_index, process_count=process_count, triplets=triplets,
            augment=config.data.get("augment", True))
    return make_iterator


@register_stage("weak")
def weak(config: ml_collections.ConfigDict) -> Stage:
    """weakalign's weak stage: the two-stage matching model from pairs of one category, no ground truth."""
    model = matching_model(config)
    options = losses.LossOptions.from_config(config.get("losses", None))

    init_fn = _pair_model_init(model, config.image_size)

    def loss_fn(params, batch_stats, frozen, batch, rng):
        del frozen, rng
        return weak_loss(model, options, params, batch_stats, batch)

    return Stage(init_fn=init_fn, loss_fn=loss_fn, make_iterator=_pair_iterator(config, triplets=False),
                 model=model, name="weak")


# ------------------------------------------------------------------------------------------------------------
# Joint stage (MaCoSNet): triplets of one category, the full objective of SPEC §6.6.


def load_perceptual_variables(config: ml_collections.ConfigDict, params, batch_stats) -> dict:
    """The frozen {'params', 'batch_stats'} of F: imported torchvision weights, or the stage's initial encoder."""
    kind = config.losses.perceptual_net
    if kind == "imagenet_resnet50":
        from macosnet_jax import weights
        path = config.losses.get("perceptual_weights", "")
        if not path:
            raise ValueError("config.losses.perceptual_net='imagenet_resnet50' needs config.losses.perceptual_weights: "
                             "the path of torchvision's resnet50 ImageNet checkpoint (.pth)")
        return weights.load_torch_checkpoint(path, "torchvision_resnet")
    return {"params": params["matching"]["encoder"], "batch_stats": batch_stats["matching"]["encoder"]}


def joint_loss(model, perceptual, options: losses.LossOptions, params, batch_stats, frozen, batch):
    """The full objective on a batch of triplets (or pairs when the transitivity weight is 0)."""
    images = {k: _normalize(batch["image_" + k]) for k in "abc" if "image_" + k in batch}
    variables = {"params": params, "batch_stats": batch_stats}
    if options.weight("transitivity"):
        outputs, mutated = model.apply(variables, images["a"], images["b"], images["c"], train=True,
                                       method="triplet", mutable=["batch_stats"])
    else:
        outputs, mutated = model.apply(variables, images["a"], images["b"], train=True, method="pair",
                                       mutable=["batch_stats"])
    from macosnet_jax.models.resnet import global_pool_features
    frozen = jax.lax.stop_gradient(frozen)  # F is fixed: no gradient reaches its weights

    def descriptor_fn(x):
        return global_pool_features(perceptual.apply(frozen, x, train=False)["features"])

    loss, terms = losses.total_loss(outputs, images=images, descriptor_fn=descriptor_fn, options=options)
    return loss, (mutated["batch_stats"], terms)


@register_stage("joint")
def joint(config: ml_collections.ConfigDict) -> Stage:
    """MaCoSNet's joint stage: one shared encoder, matching + co-segmentation, five losses."""
    options = losses.LossOptions.from_config(config.losses)
    model = macosnet_model(config)
    perceptual = perceptual_network(config)
    triplets = bool(options.weight("transitivity"))

    init_model = _pair_model_init(model, config.image_size)

    def init_fn(rng):
        # F gets a placeholder with the right structure; `load_frozen` fills it once the initial weights are known.
        images = jnp.zeros((1, config.image_size, config.image_size, 3), jnp.float32)
        frozen = perceptual.init(fast_init_key(jax.random.fold_in(rng, 1)), images, train=False)
        return dict(init_model(rng), frozen=frozen)

    def loss_fn(params, batch_stats, frozen, batch, rng):
        del rng
        return joint_loss(model, perceptual, options, params, batch_stats, frozen, batch)

    def load_frozen(params, batch_stats):
        return load_perceptual_variables(config, params, batch_stats)

    return Stage(init_fn=init_fn, loss_fn=loss_fn, make_iterator=_pair_iterator(config, triplets), model=model,
                 name="joint", load_frozen=load_frozen)
