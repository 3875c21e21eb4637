"""MaCoSNet with a DINOv2 ViT-S/14 encoder, trained weakly (the joint stage's five losses, no keypoints, no masks)
on SPair-71k trn pairs; scored by bbox PCK α 0.1 (SPEC §8, A := SPair `trg`).

The encoder starts from the official DINOv2 weights and stays frozen (`:encoder=finetune` trains it at
`encoder_lr`); the affine/TPS heads (identity at start) and the co-segmentation decoder learn at `lr` (Adam),
5 epochs over the 53,340 trn pairs at batch 4 (an unpublished schedule: a choice to sweep), validation PCK every
epoch with early stop. Images 224 px (16x16 patch grid).
Launch:
  macosnet --config configs/macosnet_spair_dinov2.py:dinov2=/w/dinov2_vits14_pretrain.pth,data_dir=/data/tfds \\
      --workdir /runs/spair_dinov2
Evaluate (test split; training validates on 'validation'):
  macosnet --config configs/macosnet_spair_dinov2.py:data_dir=/data/tfds --config.evaluation.split=test \\
      --workdir /runs/spair_dinov2 --mode eval
Zero-shot baseline (same encoder, no training):
  python -m macosnet_jax.zeroshot --weights /w/dinov2_vits14_pretrain.pth --dataset spair71k --data_dir /data/tfds
CPU smoke run (a random tiny ViT at 56 px on the builder's dummy data, 3 steps, pairs: no transitivity):
  python -m macosnet_datasets.build spair71k --manual_dir datasets/spair71k/dummy_data --data_dir /tmp/tfds_dummy
  macosnet --config configs/macosnet_spair_dinov2.py:runlocal,data_dir=/tmp/tfds_dummy --workdir /tmp/spair_dv2
Expected (SPair-71k test, PCK@0.1 bbox): anchors, not results of this config: MaCoSNet ResNet-101 26.6 (paper);
DINOv2 ViT-S/14 zero-shot nearest neighbour about 55.6; weakly supervised methods on DINOv2 features about 70.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import macosnet_common as common  # noqa: E402


def get_config(arg=None):
    arg = common.parse_dinov2(arg)
    config = common.dinov2_joint_config(arg, dataset="spair71k", num_examples=common.SPAIR_TRAIN_PAIRS, epochs=5)
    if arg.runlocal:
        # The dummy trn split holds one pair per category: no triplets, so the smoke run trains on pairs (the
        # objective without its transitivity term).
        config.losses.transitivity = 0.0
    return config
