"""tfds builders for the MaCoSNet benchmarks (installed as `macosnet_datasets`, not `datasets`).

Importing this package registers the builders `pf_pascal`, `pf_willow`, `tss`, `spair71k` and `internet`
with tfds, so `tfds.builder('pf_pascal')` / `tfds.load('tss', ...)` work. All need a manual download:
see docs/datasets.md. The folder is named `datasets/` in the repository (the design card's layout) but
installs under a project-unique name because a top-level `datasets` package would shadow HuggingFace's.
"""
from macosnet_datasets.internet.internet_dataset_builder import Builder as Internet  # noqa: F401
from macosnet_datasets.pf_pascal.pf_pascal_dataset_builder import Builder as PfPascal  # noqa: F401
from macosnet_datasets.pf_willow.pf_willow_dataset_builder import Builder as PfWillow  # noqa: F401
from macosnet_datasets.spair71k.spair71k_dataset_builder import Builder as Spair71k  # noqa: F401
from macosnet_datasets.tss.tss_dataset_builder import Builder as Tss  # noqa: F401

BUILDER_NAMES = ("pf_pascal", "pf_willow", "tss", "spair71k", "internet")
