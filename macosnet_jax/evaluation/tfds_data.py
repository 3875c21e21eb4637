"""Loading the prepared tfds builders of macosnet_datasets (`tfds.load(..., download=False)`), as numpy examples.

The benchmarks need a manual download, so a dataset that was never built is a user's error that says how to build
it (`DatasetNotPreparedError`), raised before any example is read. TensorFlow is imported only when called, configured
by `data.tf_setup` (it never sees the accelerator).
"""
from __future__ import annotations

from macosnet_jax import errors
from macosnet_jax.data import tf_setup
from macosnet_jax.evaluation.benchmarks import DATASETS

PREPARE_HINT = ("prepare it from the manual download first (see docs/datasets.md)): "
                "`python -m macosnet_datasets.build {name} --manual_dir <folder with the extracted files> "
                "--data_dir {data_dir}`")


class DatasetNotPreparedError(errors.UserError, FileNotFoundError):
    """A tfds dataset that has not been built from its manual download (in the data dir that was searched)."""


def tfds_builder(name, data_dir):
    """The tfds builder `name` ('tss', 'pf_willow/macosnet', ...) after registering macosnet_datasets."""
    tf_setup.tensorflow()  # configured (off the accelerators, threads bounded) before tfds runs anything
    import tensorflow_datasets as tfds

    import macosnet_datasets  # noqa: F401  (registers the builders)
    try:
        return tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # noqa: BLE001 - tfds raises several types for an unknown name or config
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise errors.UserError(f"dataset {name!r} is not a known tfds dataset ({type(e).__name__}: {first_line}); "
                               f"expected one of {DATASETS} (optionally with a builder config, e.g. "
                               "pf_willow/macosnet)") from e


def load_tfds_examples(name, split, data_dir=None):
    """(numpy example iterator, DatasetInfo) of a prepared tfds split, via `tfds.load(..., download=False)`.

    Raises DatasetNotPreparedError (saying how to prepare it) when the data dir holds no prepared version, and
    ValueError naming the available splits when `split` is not one of them.
    """
    import tensorflow_datasets as tfds
    builder = check_prepared(name, data_dir)
    available = sorted(builder.info.splits.keys())
    if split.split("[")[0] not in available:
        raise ValueError(f"dataset {name!r} has no split {split!r}; its splits are {available}")
    dataset = tfds.load(name, split=split, data_dir=data_dir, download=False)
    return tfds.as_numpy(dataset), builder.info


def check_prepared(name, data_dir=None):
    """The tfds builder of `name` when it is prepared in `data_dir`; DatasetNotPreparedError (naming the builder,
    the data dir and the build command) otherwise. Reads no example."""
    builder = tfds_builder(name, data_dir)
    if not builder.is_prepared():
        where = data_dir or "the default tfds data dir (~/tensorflow_datasets or $TFDS_DATA_DIR)"
        raise DatasetNotPreparedError(
            f"dataset {name!r} is not prepared in {where} (looked for {builder.data_dir}; point data_dir / "
            f"config.evaluation.data_dir / $TFDS_DATA_DIR at the folder where it was built, or "
            + PREPARE_HINT.format(name=name, data_dir=data_dir or "<tfds data dir>"))
    return builder


def class_names(info, key="category"):
    """Class names of a ClassLabel feature of the builder's info, or None."""
    try:
        feature = info.features[key]
    except (KeyError, TypeError):
        return None
    return list(feature.names) if hasattr(feature, "names") else None
