"""Internet (Object Discovery) tfds builder (importing this registers `internet`)."""
from macosnet_datasets.internet.internet_dataset_builder import Builder  # noqa: F401
