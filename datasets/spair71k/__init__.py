"""SPair-71k tfds builder (importing this registers `spair71k`)."""
from macosnet_datasets.spair71k.spair71k_dataset_builder import Builder  # noqa: F401
