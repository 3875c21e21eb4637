"""PF-WILLOW tfds builder (importing this registers `pf_willow`)."""
from macosnet_datasets.pf_willow.pf_willow_dataset_builder import Builder  # noqa: F401
