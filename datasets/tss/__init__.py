"""TSS tfds builder (importing this registers `tss`)."""
from macosnet_datasets.tss.tss_dataset_builder import Builder  # noqa: F401
