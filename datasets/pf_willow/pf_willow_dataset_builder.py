"""tfds builder for PF-WILLOW (Ham et al., Proposal Flow): a test-only keypoint benchmark, 10 keypoints per image.

Two pair lists are in circulation and give different numbers, so each is a BuilderConfig:
- `pf` (default): the standard 900-pair `test_pairs_pf.csv` (CNNGeo / weakalign / NC-Net), positional
  columns: image A, image B, 10 X of A, 10 Y of A, 10 X of B, 10 Y of B.
- `macosnet`: MaCoSNet's 450-pair `test.csv` with the PF-PASCAL test columns
  `source_image,target_image,class,XA,YA,XB,YB`.
A = the first image column (source, where transferred keypoints are compared), B = the second. The category
is the image's class folder (e.g. 'car(G)'), which is what the per-class tables use.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from macosnet_datasets import common
from macosnet_datasets.pf_pascal.pf_pascal_dataset_builder import pair_features

NAME = "pf_willow"
CATEGORIES = ("car(G)", "car(M)", "car(S)", "duck(S)", "motorbike(G)", "motorbike(M)", "motorbike(S)",
              "winebottle(M)", "winebottle(wC)", "winebottle(woC)")
NUM_KEYPOINTS = 10

INSTRUCTIONS = """\
Download PF-WILLOW from the Proposal Flow page (https://www.di.ens.fr/willow/research/proposalflow/,
"PF-dataset.zip") and the pair list test_pairs_pf.csv (CNNGeo / weakalign: `datasets/proposal-flow-willow/`)
and/or MaCoSNet's test.csv. Place them as

  <manual_dir>/pf_willow/
      PF-dataset/<class folder>/<name>.png   (car(G), car(M), ..., winebottle(woC))
      test_pairs_pf.csv                      (config 'pf', 900 pairs)
      test.csv                               (config 'macosnet', 450 pairs)

(the CSVs may also be up to two folder levels below). Build with
  python -m macosnet_datasets.build pf_willow/pf --manual_dir <manual_dir> [--data_dir <tfds data dir>]
"""


@dataclasses.dataclass
class WillowConfig(tfds.core.BuilderConfig):
    pair_list: str = "test_pairs_pf.csv"


def _read_pf_rows(csv_path: epath.Path):
    """Positional 900-pair list -> [(line, image A, image B, (xa, ya, xb, yb))]."""
    _, rows = common.read_csv_rows(csv_path, min_columns=2 + 4 * NUM_KEYPOINTS, numeric_column=2)
    out = []
    for line, f in rows:
        where = f"{csv_path}, line {line}"
        try:
            v = np.asarray([float(t) for t in f[2:2 + 4 * NUM_KEYPOINTS]], np.float32)
        except ValueError as e:
            raise common.AnnotationError(f"{where}: malformed keypoint field ({e}).") from None
        out.append((line, f[0], f[1], tuple(v.reshape(4, NUM_KEYPOINTS))))
    return out


def _read_named_rows(csv_path: epath.Path):
    """PF-PASCAL-style list (source_image,target_image,class,XA,YA,XB,YB) -> same tuples as _read_pf_rows."""
    cols = ("source_image", "target_image", "XA", "YA", "XB", "YB")
    header, rows = common.read_csv_rows(csv_path, required=cols)
    i = {c: header.index(c) for c in cols}
    out = []
    for line, f in rows:
        where = f"{csv_path}, line {line}"
        xy = tuple(common.parse_float_list(f[i[c]], f"{where}, column {c!r}") for c in cols[2:])
        out.append((line, f[i["source_image"]], f[i["target_image"]], xy))
    return out


def generate_pairs(root: epath.Path, csv_path: epath.Path, positional: bool):
    """Yields (key, example) for the test split; an unreadable image is an error (test data)."""
    image_dir = root / "PF-dataset"
    index = common.index_images(image_dir)
    rows = _read_pf_rows(csv_path) if positional else _read_named_rows(csv_path)
    for line, name_a, name_b, xy in rows:
        where = f"{csv_path}, line {line}"
        path_a = common.lookup_image(index, name_a, where, image_dir)
        path_b = common.lookup_image(index, name_b, where, image_dir)
        category = path_a.parent.name
        if category not in CATEGORIES:
            raise common.DatasetFilesError(f"{where}: image {path_a} is not in a class folder {CATEGORIES}.")
        kp_a, kp_b = common.keypoints_from_xy(*xy, where=where)
        image_a, _ = common.read_image(path_a, where)
        image_b, _ = common.read_image(path_b, where)
        pair_id = f"test_{line - 1:05d}_{path_a.stem}_{path_b.stem}"
        yield pair_id, {"pair_id": pair_id, "image_a": image_a, "image_b": image_b, "keypoints_a": kp_a,
                        "keypoints_b": kp_b, "category": CATEGORIES.index(category), "flip": 0}


class Builder(tfds.core.GeneratorBasedBuilder):
    """PF-WILLOW test pairs; config 'pf' (900 pairs) or 'macosnet' (450 pairs)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
    BUILDER_CONFIGS = [
        WillowConfig(name="pf", pair_list="test_pairs_pf.csv",
                     description="Standard 900-pair list test_pairs_pf.csv."),
        WillowConfig(name="macosnet", pair_list="test.csv", description="MaCoSNet's 450-pair list test.csv."),
    ]
    DEFAULT_BUILDER_CONFIG_NAME = "pf"

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=pair_features(CATEGORIES),
            homepage="https://www.di.ens.fr/willow/research/proposalflow/",
            description="PF-WILLOW test pairs; A = first image column (comparison image), B = second.")

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        root = common.find_dataset_root(dl_manager.manual_dir, NAME, ["PF-dataset"], INSTRUCTIONS)
        name = self.builder_config.pair_list
        csv_path = common.find_first(root, [name])
        if csv_path is None:
            raise common.DatasetFilesError(
                f"pf_willow/{self.builder_config.name}: pair list {name!r} not found below {root} "
                f"(searched up to two folder levels).\n{INSTRUCTIONS}")
        return {"test": self._generate_examples(root, csv_path, positional=name == "test_pairs_pf.csv")}

    def _generate_examples(self, root, csv_path, positional):
        return generate_pairs(root, csv_path, positional)
