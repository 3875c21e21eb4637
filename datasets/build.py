"""Prepares the manual-download datasets: `python -m macosnet_datasets.build NAME[/CONFIG] ... --manual_dir DIR`.

Why not `tfds build`: the `tfds` command of tensorflow-datasets 4.9.x imports apache_beam at start-up
(a large optional dependency we do not install), and it needs `--imports macosnet_datasets` to see these
builders. This wrapper does the same thing for our five builders with only tfds itself:

    python -m macosnet_datasets.build pf_pascal pf_willow/pf pf_willow/macosnet tss spair71k internet \
        --manual_dir ~/tensorflow_datasets/downloads/manual --data_dir ~/tensorflow_datasets

It prints the number of examples per split, which can be checked against docs/datasets.md.
"""
from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def build(name: str, manual_dir: str | None, data_dir: str | None) -> dict[str, int]:
    """Builds `name` ('pf_willow' or 'pf_willow/macosnet') and returns {split: number of examples}."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    import macosnet_datasets  # noqa: F401  (registers the builders)

    tf.config.set_visible_devices([], "GPU")  # data preparation never needs the accelerator
    builder = tfds.builder(name, data_dir=data_dir)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    return {split: info.num_examples for split, info in builder.info.splits.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="+", help="builder names, optionally with /config (e.g. spair71k/small)")
    parser.add_argument("--manual_dir", default=None,
                        help="folder holding <name>/ subfolders (default: <data_dir>/downloads/manual)")
    parser.add_argument("--data_dir", default=None, help="tfds data dir (default: ~/tensorflow_datasets)")
    args = parser.parse_args(argv)
    for name in args.names:
        counts = build(name, args.manual_dir, args.data_dir)
        print(f"{name}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))


if __name__ == "__main__":
    main()
