"""The benchmark table (SPEC §8): which datasets can be scored by name, their default splits, and the paper's figures.

One place for the facts about the benchmarks themselves, so that adding a dataset means one entry here (and its
branch in `dataset_driver.evaluate_dataset`). Pure Python: nothing here reads data.
"""
from __future__ import annotations

KEYPOINT_DATASETS = {"pf_pascal": "PF-PASCAL", "pf_willow": "PF-WILLOW", "spair71k": "SPair-71k"}
TFDS_DATASETS = tuple(KEYPOINT_DATASETS) + ("tss", "internet")
DATASETS = TFDS_DATASETS + ("synthetic_objects",)
DEFAULT_SPLITS = {"pf_pascal": "test", "pf_willow": "test", "spair71k": "test", "tss": "test",
                  "internet": "subset100", "synthetic_objects": "test"}
TSS_SUBSETS = ("FG3DCar", "JODS", "PASCAL")
# The paper's figures (SPEC §8), attached as notes to the tables they belong to.
PAPER_FIGURES = {
    ("pf_pascal", "img224"): "paper (MaCoSNet): PCK@0.1 = 0.790 under img224 on the test split",
    ("pf_willow", "img224"): "paper (MaCoSNet): PCK@0.05/0.1/0.15 = 0.538/0.854/0.939 under img224",
    ("spair71k", "bbox"): "paper (MaCoSNet): PCK@0.1 = 0.266 under bbox (per-image mean) on the test split",
    ("tss", "flow_pck"): "paper (MaCoSNet): FG3DCar/JODS/PASCAL = 0.908/0.783/0.615, mean 0.769 (compat)",
    ("tss", "coseg"): "paper (MaCoSNet): mean P/J = 0.947/0.84",
    ("internet", "coseg"): "paper (MaCoSNet): mean P/J = 0.935/0.70 on the 100-image subsets",
}


def base_name(name):
    """'pf_willow/macosnet' -> 'pf_willow' (builder name without its config)."""
    return str(name).split("/")[0].split(":")[0]


def resolve_split(name, split):
    """The split to score: the dataset's default when None; Internet's generic 'test'/'validation' -> 'subset100'."""
    base = base_name(name)
    if split is None:
        return DEFAULT_SPLITS.get(base, "test")
    if base == "internet" and split in ("test", "validation"):
        return "subset100"  # the evaluation protocol: the 100-image subsets (DATASETS.md)
    return split


def add_notes(tables, base, extra=()):
    """Appends the paper's figure for each table (PAPER_FIGURES) and any extra notes, in place; returns tables."""
    for key, table in tables.items():
        if (base, key) in PAPER_FIGURES:
            table.notes.append(PAPER_FIGURES[(base, key)])
        table.notes.extend(extra)
    return tables
