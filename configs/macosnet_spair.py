"""SPair-71k fine-tuning of the PF-PASCAL MaCoSNet model (SPEC §7, §8: bbox PCK α 0.1, A := SPair `trg`).

The paper does not publish this schedule: 5 epochs over the 53,340 trn pairs at batch 4, same learning rates as
the joint stage, starting from the PF-PASCAL joint run.
Launch:
  macosnet --config configs/macosnet_spair.py:init_from=/runs/joint_pf,data_dir=/data/tfds --workdir /runs/spair
CPU smoke run: macosnet --config configs/macosnet_spair.py:runlocal --workdir /tmp/spair_local
Expected (paper): 26.6 PCK (bbox, α 0.1, per-image mean) on the test split.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import macosnet_common as common  # noqa: E402


def get_config(arg=None):
    arg = common.parse(arg)
    return common.joint_config(arg, dataset="spair71k", num_examples=common.SPAIR_TRAIN_PAIRS, epochs=5,
                               eval_dataset=None)
