"""What the training stages share: the image source, image normalisation, model init, the pair iterator, and
the torch-weight loader that knows the model's sizes.

Images travel as uint8 and are normalised inside the jitted step (a quarter of the host->device bytes).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections

from macosnet_jax import geometry


@functools.lru_cache(maxsize=4)
def _synthetic_objects(num_images: int, size: int, seed: int, num_categories: int, background: str) -> dict:
    from macosnet_jax.data import synthetic
    return synthetic.make_synthetic_objects(num_images, size, seed, num_categories, background)


def image_source(data: ml_collections.ConfigDict, image_size: int) -> dict:
    """The training image set named by config.data, in memory (dict of numpy arrays)."""
    if data.name == "synthetic_objects":
        return _synthetic_objects(int(data.num_images), int(image_size), int(data.seed), int(data.num_categories),
                                  str(data.get("background", "clutter")))
    if data.name == "image_folder":
        from macosnet_jax.data import warps
        return {"image": warps.load_image_folder(data.path, image_size)}
    if data.name == "tfds":
        import tensorflow_datasets as tfds
        return tfds.load(data.tfds_name, split=data.split, data_dir=data.get("data_dir", None) or None)
    raise ValueError(f"config.data.name='{data.name}' is unknown; expected synthetic_objects, image_folder or tfds")


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
    (config.model.last_layer).
    """
    def load(path: str, layout: str) -> dict:
        from macosnet_jax import weights  # only needed when torch weights are used
        kwargs = {}
        if "image_size" in config:
            kwargs["image_size"] = config.image_size
        if layout == "torchvision_resnet" and "model" in config and "last_layer" in config.model:
            kwargs["last_layer"] = config.model.last_layer
        return weights.load_torch_checkpoint(path, layout, **kwargs)
    return load
