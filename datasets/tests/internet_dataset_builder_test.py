"""tfds harness test of the Internet builder on its dummy data."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import tensorflow_datasets as tfds  # noqa: E402

from macosnet_datasets.internet import internet_dataset_builder as internet  # noqa: E402


class InternetTest(tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = internet.Builder
    SPLITS = {"full": 6, "subset100": 3}
