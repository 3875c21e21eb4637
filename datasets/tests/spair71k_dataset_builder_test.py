"""tfds harness tests of the SPair-71k builder (large and small layouts) on its dummy data."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import tensorflow_datasets as tfds  # noqa: E402

from macosnet_datasets.spair71k import spair71k_dataset_builder as spair71k  # noqa: E402


class Spair71kLargeTest(tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = spair71k.Builder
    BUILDER_CONFIG_NAMES_TO_TEST = ["large"]
    SPLITS = {"train": 2, "validation": 1, "test": 2}


class Spair71kSmallTest(tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = spair71k.Builder
    BUILDER_CONFIG_NAMES_TO_TEST = ["small"]
    SPLITS = {"train": 1, "validation": 1, "test": 1}
