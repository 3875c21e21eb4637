"""The training stages of SPEC §7 as `stage_api.Stage`s: strong synthetic (CNNGeo), weak (weakalign), joint (MaCoSNet).

A stage ties a model, its loss and its data to the generic, data-parallel loop of `train.py`. Each module registers
its stage by name (`config.stage`); importing this package registers them all. A stage reads:
  config.image_size, config.model (the model's fields, through models.factory), config.data (the image source,
  read by data/sources.py: `name` = 'synthetic_objects' with num_images / num_categories / seed, 'image_folder'
  with path, or 'tfds' with tfds_name / split / data_dir), and
  config.losses (`losses.LossOptions`: λ per term and the loss options) for the weak and joint stages.
  strong.py  strong_synthetic: grid loss on synthetic affine and TPS warps
  weak.py    weak: weakalign's inlier score on pairs of one category
  joint.py   joint: MaCoSNet's full objective on triplets (or pairs)
  inputs.py  what they share: normalisation, model init, the pair iterator, the torch-weight loader
"""
from macosnet_jax.stages.inputs import fast_init_key, image_source, normalize
from macosnet_jax.stages.joint import joint, joint_loss, load_perceptual_variables
from macosnet_jax.stages.strong import strong_loss, strong_synthetic
from macosnet_jax.stages.weak import weak, weak_loss

__all__ = ["fast_init_key", "image_source", "joint", "joint_loss", "load_perceptual_variables", "normalize",
           "strong_loss", "strong_synthetic", "weak", "weak_loss"]
