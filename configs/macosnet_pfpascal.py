"""MaCoSNet joint stage on PF-PASCAL (SPEC §7.3): matching + co-segmentation from the weak stage's weights.

Launch:
  macosnet --config configs/macosnet_pfpascal.py:init_from=/runs/weak,data_dir=/data/tfds --workdir /runs/joint_pf
  (torch start: :init_torch=/w/weakalign_resnet101_affine_tps.pth.tar@weakalign)
Evaluate: macosnet --config configs/macosnet_pfpascal.py --workdir /runs/joint_pf --mode eval
CPU smoke run: macosnet --config configs/macosnet_pfpascal.py:runlocal --workdir /tmp/joint_local
Expected: PF-PASCAL test PCK 0.79 (img224, α 0.1; paper 79.0); PF-WILLOW .538/.854/.939 (img224, α .05/.1/.15).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import macosnet_common as common  # noqa: E402


def get_config(arg=None):
    arg = common.parse(arg)
    return common.joint_config(arg, dataset="pf_pascal", num_examples=common.PF_PASCAL_TRAIN_PAIRS)
