"""Joint stage (MaCoSNet, SPEC §7.3): triplets of one category, the full objective of SPEC §6.6."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from macosnet_jax import losses
from macosnet_jax.data.batches import PairBatch, TripletBatch
from macosnet_jax.models.factory import macosnet_model, perceptual_network
from macosnet_jax.stage_api import Stage, register_stage
from macosnet_jax.stages.inputs import fast_init_key, normalize, pair_iterator, pair_model_init, torch_loader


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
    # A ViT encoder has no BatchNorm statistics.
    return {"params": params["matching"]["encoder"], "batch_stats": batch_stats["matching"].get("encoder", {})}


def joint_loss(model, perceptual, options: losses.LossOptions, params, batch_stats, frozen,
               batch: PairBatch | TripletBatch):
    """The full objective on a batch of triplets (or pairs when the transitivity weight is 0)."""
    images = {k: normalize(batch["image_" + k]) for k in "abc" if "image_" + k in batch}
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

    true_masks = {k: batch["mask_" + k] for k in "ab" if "mask_" + k in batch} or None
    loss, terms = losses.total_loss(outputs, images=images, descriptor_fn=descriptor_fn, options=options,
                                    true_masks=true_masks)
    return loss, (mutated["batch_stats"], terms)


@register_stage("joint")
def joint(config: ml_collections.ConfigDict) -> Stage:
    """MaCoSNet's joint stage: one shared encoder, matching + co-segmentation, five losses."""
    options = losses.LossOptions.from_config(config.losses)
    model = macosnet_model(config)
    perceptual = perceptual_network(config)
    triplets = bool(options.weight("transitivity"))

    init_model = pair_model_init(model, config.image_size)

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

    return Stage(init_fn=init_fn, loss_fn=loss_fn, make_iterator=pair_iterator(config, triplets), model=model,
                 name="joint", load_frozen=load_frozen, load_torch=torch_loader(config))
