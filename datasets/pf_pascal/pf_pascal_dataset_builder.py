"""tfds builder for PF-PASCAL (Ham et al., Proposal Flow) with the weakalign / NC-Net / MaCoSNet pair lists.

Manual download only (the images come from the Proposal Flow page, the pair lists from weakalign). Examples
keep the original resolution and the original JPEG bytes; resizing, flips and crops belong to the input
pipeline. Image A is the CSV's `source_image` (where transferred keypoints are compared, SPEC §8), B is the
`target_image`. Training rows with flip=1 are stored as the same images with `flip=1`: the pipeline mirrors
both images.
"""
from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from macosnet_datasets import common

NAME = "pf_pascal"
CATEGORIES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
              "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
              "tvmonitor")
# split -> accepted pair-list names (weakalign/NC-Net first, then the MaCoSNet names).
PAIR_LISTS = {"train": ("train_pairs.csv", "train.csv"), "validation": ("val_pairs.csv", "eval.csv"),
              "test": ("test_pairs.csv", "test.csv")}
TRAIN_COLUMNS = ("source_image", "target_image", "class", "flip")
EVAL_COLUMNS = ("source_image", "target_image", "class", "XA", "YA", "XB", "YB")

INSTRUCTIONS = """\
Download PF-PASCAL from the Proposal Flow page (https://www.di.ens.fr/willow/research/proposalflow/,
"PF-dataset-PASCAL.zip") and the pair lists train_pairs.csv / val_pairs.csv / test_pairs.csv (weakalign,
NC-Net: `datasets/pf-pascal/image_pairs/`; MaCoSNet's train.csv / eval.csv / test.csv are accepted too).
Place them as

  <manual_dir>/pf_pascal/
      PF-dataset-PASCAL/JPEGImages/<name>.jpg      (unzipped archive; other folders may stay)
      train_pairs.csv  val_pairs.csv  test_pairs.csv   (anywhere up to two folder levels below)

Columns: train `source_image,target_image,class,flip`; val/test `source_image,target_image,class,XA,YA,XB,YB`
(';'-separated 1-indexed pixel coordinates). Then build with
  python -m macosnet_datasets.build pf_pascal --manual_dir <manual_dir> [--data_dir <tfds data dir>]
"""


def pair_features(categories, extra=None) -> tfds.features.FeaturesDict:
    """Features common to the keypoint pair datasets (see docs/datasets.md)."""
    spec = {
        "pair_id": tfds.features.Text(),
        "image_a": tfds.features.Image(shape=(None, None, 3)),
        "image_b": tfds.features.Image(shape=(None, None, 3)),
        "keypoints_a": tfds.features.Tensor(shape=(None, 2), dtype=np.float32),
        "keypoints_b": tfds.features.Tensor(shape=(None, 2), dtype=np.float32),
        "category": tfds.features.ClassLabel(names=list(categories)),
        "flip": tfds.features.Scalar(dtype=np.int32),
    }
    spec.update(extra or {})
    return tfds.features.FeaturesDict(spec)


def find_root(manual_dir: epath.PathLike) -> epath.Path:
    """The folder holding `PF-dataset-PASCAL/JPEGImages` (see common.find_dataset_root)."""
    return common.find_dataset_root(manual_dir, NAME, ["PF-dataset-PASCAL/JPEGImages"], INSTRUCTIONS)


def generate_pairs(root: epath.Path, split: str, csv_path: epath.Path, skip_corrupt: bool = False):
    """Yields (key, example) for one split's pair list.

    root: the folder found by `find_root`. skip_corrupt: skip pairs with an undecodable image (counted
    warning) instead of raising; used for the training split only.
    """
    is_train = split == "train"
    columns = TRAIN_COLUMNS if is_train else EVAL_COLUMNS
    header, rows = common.read_csv_rows(csv_path, required=columns)
    image_dir = root / "PF-dataset-PASCAL" / "JPEGImages"
    index = common.index_images(image_dir)
    col = {c: header.index(c) for c in columns}
    skipper = common.CorruptSkipper(NAME, split, len(rows), allow=skip_corrupt)
    for line, f in rows:
        where = f"{csv_path}, line {line}"
        cls = common.parse_int(f[col["class"]], where + ", column 'class'")
        if not 1 <= cls <= len(CATEGORIES):
            raise common.AnnotationError(f"{where}: class {cls} outside 1..{len(CATEGORIES)} (VOC order).")
        path_a = common.lookup_image(index, f[col["source_image"]], where, image_dir)
        path_b = common.lookup_image(index, f[col["target_image"]], where, image_dir)
        if is_train:
            flip = common.parse_int(f[col["flip"]], where + ", column 'flip'")
            kp_a = kp_b = np.zeros((0, 2), np.float32)
        else:
            flip = 0
            xy = [common.parse_float_list(f[col[c]], f"{where}, column {c!r}") for c in ("XA", "YA", "XB", "YB")]
            kp_a, kp_b = common.keypoints_from_xy(*xy, where=where)
        try:
            image_a, _ = common.read_image(path_a, where)
            image_b, _ = common.read_image(path_b, where)
        except common.CorruptImageError as e:
            skipper.skip(e)
            continue
        pair_id = f"{split}_{line - 1:05d}_{path_a.stem}_{path_b.stem}" + ("_flip" if flip else "")
        yield pair_id, {"pair_id": pair_id, "image_a": image_a, "image_b": image_b, "keypoints_a": kp_a,
                        "keypoints_b": kp_b, "category": cls - 1, "flip": flip}
    skipper.report()


class Builder(tfds.core.GeneratorBasedBuilder):
    """PF-PASCAL pairs: train (no keypoints, flip flag), validation and test (keypoints)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release (weakalign / NC-Net pair lists)."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=pair_features(CATEGORIES),
            homepage="https://www.di.ens.fr/willow/research/proposalflow/",
            description="PF-PASCAL image pairs; A = source_image (comparison image), B = target_image.")

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        root = find_root(dl_manager.manual_dir)
        splits = {}
        for split, names in PAIR_LISTS.items():
            csv_path = common.find_first(root, names)
            if csv_path is not None:
                splits[split] = self._generate_examples(root, split, csv_path, skip_corrupt=split == "train")
        if not splits:
            raise common.DatasetFilesError(
                f"pf_pascal: no pair list ({sorted(n for v in PAIR_LISTS.values() for n in v)}) found below "
                f"{root}.\n{INSTRUCTIONS}")
        return splits

    def _generate_examples(self, root, split, csv_path, skip_corrupt=False):
        return generate_pairs(root, split, csv_path, skip_corrupt)
