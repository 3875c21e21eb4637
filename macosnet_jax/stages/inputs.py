"""What the training stages share: image normalisation, model init, the pair iterator, and the torch-weight loader
that knows the model's sizes (the image source itself is data/sources.py, `image_source` here).

Images travel as uint8 and are normalised inside the jitted step (a quarter of the host->device bytes).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from macosnet_jax import geometry
from macosnet_jax.data.sources import from_config as image_source  # the training set named by config.data


def normalize(images):
    return geometry.normalize_image(images)


def fast_init_key(rng):
    """An 'rbg' key derived from `rng`: XLA-CPU compiles one threefry sampler per parameter tensor, which made a
    tiny model's init take ~50 s to compile against ~8 s with rbg (see models.matching.init_matching_model)."""
    return jax.random.key(jax.random.bits(rng, (), jnp.uint32), impl="rbg")


def pair_model_init(model, image_size):
    """init_fn of a model called on (image_a, image_b): rng -> {'params', 'batch_stats'}."""
    def init_fn(rng):
        images = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
        return model.init(fast_init_key(rng), images, images, train=False)
    return init_fn


def pair_iterator(config, triplets):
    def make_iterator(start_step, process_index, process_count):
        from macosnet_jax.data import pipeline
        source = image_source(config.data, config.image_size)
        return pipeline.make_pair_iterator(
            source, batch_size=config.batch_size // process_count, image_size=config.image_size, seed=config.seed,
            start_step=start_step, process_index=process_index, process_count=process_count, triplets=triplets,
            augment=config.data.get("augment", True))
    return make_iterator


def torch_loader(config: ml_collections.ConfigDict):
    """Stage.load_torch for a model built from `config`: (path, layout) -> converted variables.

    The converter gets the model's image size and, for a bare torchvision ResNet, where the model cuts it
    (config.model.last_layer). An official DINOv2 file (layout 'dinov2') is converted for the configured ViT
    encoder (config.model.vit_*, strict: a differently sized checkpoint is an error), as a bare encoder tree:
    config.init_torch.prefix puts it in place ('encoder' in a MatchingModel, 'matching/encoder' in MaCoSNet).
    """
    def load(path: str, layout: str) -> dict:
        from macosnet_jax import weights  # only needed when torch weights are used
        if layout == "dinov2":
            from macosnet_jax.models import backbones, factory
            from macosnet_jax.weights import dinov2 as dinov2_weights
            matching = factory.matching_model(config)
            if matching.backbone != "dinov2":
                raise ValueError(f"config.init_torch.layout='dinov2' needs config.model.backbone='dinov2', "
                                 f"not {matching.backbone!r}")
            return dinov2_weights.encoder_variables(path, backbones.DINOV2.make(matching.encoder_fields()))
        kwargs = {}
        if "image_size" in config:
            kwargs["image_size"] = config.image_size
        if layout == "torchvision_resnet" and "model" in config and "last_layer" in config.model:
            kwargs["last_layer"] = config.model.last_layer
        return weights.load_torch_checkpoint(path, layout, **kwargs)
    return load
