"""PF-PASCAL tfds builder (importing this registers `pf_pascal`)."""
from macosnet_datasets.pf_pascal.pf_pascal_dataset_builder import Builder  # noqa: F401
