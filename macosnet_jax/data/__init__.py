"""Input data: built-in synthetic sets and the tf.data pair/triplet pipeline.

- `synthetic`: synthetic_objects, procedurally generated categories of textured objects with masks, landmarks and
  categories (numpy/jax, no TensorFlow): `make_synthetic_objects(num_images, size, seed, num_categories)`.
- `warps`: synthetic_warps, CNNGeo-style strong pairs (source, target, θ) from any image source, generated in a
  jitted jax function: `synthetic_warp_batch(key, images, kind, size)`, `make_warp_iterator(...)`.
- `pipeline`: tf.data pairs/triplets with crop + pair-flip augmentation, per-process slices, resumable by step:
  `make_pair_iterator(...)`. Imported lazily (it imports TensorFlow).
- `batches`: the batch kinds they yield and the stages read (PairBatch, TripletBatch, WarpPairBatch, StrongBatch).
- `sources`: the one loader both iterators and the stages use: config.data, arrays, dicts, folders or tfds datasets
  -> in-memory image or pair sets (`from_config`, `as_in_memory`, `image_set`); TensorFlow only when a folder or
  dataset is read (`tf_setup`).
"""
from macosnet_jax.data.synthetic import make_synthetic_objects, render_synthetic_objects  # noqa: F401
from macosnet_jax.data.warps import make_warp_iterator, synthetic_warp_batch  # noqa: F401


def make_pair_iterator(*args, **kwargs):
    """See `macosnet_jax.data.pipeline.make_pair_iterator` (TensorFlow is imported on first use)."""
    from macosnet_jax.data import pipeline

    return pipeline.make_pair_iterator(*args, **kwargs)
