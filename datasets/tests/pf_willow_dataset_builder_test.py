"""tfds harness tests of the PF-WILLOW builder (both pair-list configs) on its dummy data."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import tensorflow_datasets as tfds  # noqa: E402

from macosnet_datasets.pf_willow import pf_willow_dataset_builder as pf_willow  # noqa: E402


class PfWillowPfTest(tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = pf_willow.Builder
    BUILDER_CONFIG_NAMES_TO_TEST = ["pf"]
    SPLITS = {"test": 3}


class PfWillowMacosnetTest(tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = pf_willow.Builder
    BUILDER_CONFIG_NAMES_TO_TEST = ["macosnet"]
    SPLITS = {"test": 2}
