"""Weak stage (weakalign, SPEC §6.1 and §7.2): fine-tune the strong model on PF-PASCAL pairs, no labels.

L = -(score_aff + score_composed) (soft-inlier count, fg weight 'none'), all layers train, encoder BN statistics
frozen; Adam 5e-8, batch 16, 15 epochs over the 2940 train rows (random crops keeping 50-100% of each side, pair
flips). Starts from the strong stage's work dir (or a weakalign/CNNGeo torch checkpoint).

Launch:
  macosnet --config configs/weak_pfpascal.py:init_from=/runs/strong --workdir /runs/weak
  (torch start: :init_torch=/w/cnngeo_resnet101.pth.tar@cnngeo)
CPU smoke run:
  macosnet --config configs/weak_pfpascal.py:runlocal --workdir /tmp/weak_local
Expected: PF-PASCAL test PCK (img224, α 0.1) about 0.75 (weakalign reports 75.8).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import macosnet_common as common  # noqa: E402
from macosnet_jax import experiment_config  # noqa: E402


def get_config(arg=None):
    arg = common.parse(arg)
    config = experiment_config.base_config()
    config.stage = "weak"
    config.image_size = arg.image_size
    config.model = common.paper_model(arg.image_size)
    config.data = dict(name="tfds", tfds_name="pf_pascal", split="train", data_dir=arg.data_dir,
                       crop_keep=(0.5, 1.0), flip=True)
    config.losses = dict(fg_weight="none", inlier_kernel="bilinear")
    config.batch_size = 16
    steps_per_epoch = experiment_config.epochs_to_steps(1, common.PF_PASCAL_TRAIN_PAIRS, config.batch_size)
    config.total_steps = 15 * steps_per_epoch
    config.log_every_steps = 20
    config.checkpoint_every_steps = steps_per_epoch
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 5e-8
    config.init_torch.layout = "cnngeo"
    return common.apply_common_args(config, arg)
