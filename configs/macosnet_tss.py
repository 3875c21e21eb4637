"""MaCoSNet joint stage on TSS (SPEC §7.3, §8): transductive, trained and evaluated on the same 800 directed pairs.

Launch:
  macosnet --config configs/macosnet_tss.py:init_from=/runs/weak,data_dir=/data/tfds --workdir /runs/joint_tss
CPU smoke run: macosnet --config configs/macosnet_tss.py:runlocal --workdir /tmp/tss_local
Expected (paper): flow PCK α 0.05 FG3DCar/JODS/PASCAL .908/.783/.615 (avg .769, released-code `compat` flip
handling); co-segmentation P/J avg .947/.84.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import macosnet_common as common  # noqa: E402


def get_config(arg=None):
    arg = common.parse(arg)
    config = common.joint_config(arg, dataset="tss", num_examples=common.TSS_PAIRS, eval_dataset="tss")
    if not arg.runlocal:
        config.data.crop_keep = (1.0, 1.0)  # transductive: the evaluated pairs, no crops
    return config
