"""tfds harness test of the PF-PASCAL builder on its dummy data, plus bad-input checks."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import tensorflow_datasets as tfds  # noqa: E402

from macosnet_datasets.pf_pascal import pf_pascal_dataset_builder as pf_pascal  # noqa: E402


class PfPascalTest(tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = pf_pascal.Builder
    SPLITS = {"train": 4, "validation": 2, "test": 3}
