"""MaCoSNet with a DINOv2 ViT-S/14 encoder, trained weakly (the joint stage's five losses, no keypoints, no masks)
on PF-PASCAL train pairs; scored by PCK α 0.1 (img224) on the test split, validation PCK for early stopping.

As configs/macosnet_pfpascal.py (60 epochs over the 2940 train rows, batch 4, early stop 0.05 below the best
validation PCK), with the encoder started from the official DINOv2 weights and frozen (`:encoder=finetune` trains it
at `encoder_lr`); heads (identity at start) and decoder learn at `lr` (Adam). Images 224 px (16x16 patch grid).
Launch:
  macosnet --config configs/macosnet_pfpascal_dinov2.py:dinov2=/w/dinov2_vits14_pretrain.pth,data_dir=/data/tfds \\
      --workdir /runs/pf_dinov2
Evaluate (test split; training validates on 'validation'):
  macosnet --config configs/macosnet_pfpascal_dinov2.py:data_dir=/data/tfds --config.evaluation.split=test \\
      --workdir /runs/pf_dinov2 --mode eval
CPU smoke run (a random tiny ViT at 56 px on the builder's dummy data, 3 steps):
  python -m macosnet_datasets.build pf_pascal --manual_dir datasets/pf_pascal/dummy_data --data_dir /tmp/tfds_dummy
  macosnet --config configs/macosnet_pfpascal_dinov2.py:runlocal,data_dir=/tmp/tfds_dummy --workdir /tmp/pf_dv2
Expected (PF-PASCAL test, PCK@0.1 img224): no published number for this combination; anchors: MaCoSNet
ResNet-101 79.0 (paper); on SPair-71k (bbox PCK@0.1) MaCoSNet ResNet-101 26.6, DINOv2 zero-shot NN about 55.6,
DINOv2-based weakly supervised methods about 70.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import macosnet_common as common  # noqa: E402


def get_config(arg=None):
    arg = common.parse_dinov2(arg)
    return common.dinov2_joint_config(arg, dataset="pf_pascal", num_examples=common.PF_PASCAL_TRAIN_PAIRS,
                                      epochs=60)
