"""MaCoSNet joint stage on the Internet co-segmentation dataset (Rubinstein et al.; 100-image subsets).

Pairs are drawn within a category (Airplane, Car, Horse); transductive like the paper.
Launch:
  macosnet --config configs/macosnet_internet.py:init_from=/runs/weak,data_dir=/data/tfds --workdir /runs/joint_inet
CPU smoke run: macosnet --config configs/macosnet_internet.py:runlocal --workdir /tmp/inet_local
Expected (paper): P/J averaged over the three classes .935/.70.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import macosnet_common as common  # noqa: E402


def get_config(arg=None):
    arg = common.parse(arg)
    return common.joint_config(arg, dataset="internet", num_examples=common.INTERNET_IMAGES_100,
                               eval_dataset="internet")
