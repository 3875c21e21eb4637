"""tfds builder for SPair-71k (Min et al., 2019): 18 categories, keypoints, boxes and difficulty metadata.

SPair names its images `src` and `trg`; predictions are compared on `trg` (PCK bbox uses trg's box), so
A := trg and B := src (SPEC §8; the evaluation transfers B's keypoints into A). Splits follow a layout file
`Layout/<large|small>/{trn,val,test}.txt` (BuilderConfig 'large', the default, or 'small'); each line
`<pairid>-<src>-<trg>:<category>` names `PairAnnotation/<split>/<line>.json`.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from macosnet_datasets import common
from macosnet_datasets.pf_pascal.pf_pascal_dataset_builder import pair_features

NAME = "spair71k"
CATEGORIES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "dog",
              "horse", "motorbike", "person", "pottedplant", "sheep", "train", "tvmonitor")
SPLITS = {"train": "trn", "validation": "val", "test": "test"}
REQUIRED_KEYS = ("src_imname", "trg_imname", "category", "src_kps", "trg_kps", "src_bndbox", "trg_bndbox")
# Pair-level metadata kept as int32 scalars (-1 where a JSON lacks it: older releases differ).
INT_METADATA = ("mirror", "viewpoint_variation", "scale_variation", "truncation", "occlusion")

INSTRUCTIONS = """\
Download SPair-71k from https://cvlab.postech.ac.kr/research/SPair-71k/ ("SPair-71k.tar.gz") and extract it:

  <manual_dir>/spair71k/
      SPair-71k/JPEGImages/<category>/<name>.jpg
      SPair-71k/PairAnnotation/{trn,val,test}/<pairid>-<src>-<trg>:<category>.json
      SPair-71k/Layout/{large,small}/{trn,val,test}.txt
      (ImageAnnotation/ and Segmentation/ may stay; they are not read)

Build with
  python -m macosnet_datasets.build spair71k/large --manual_dir <manual_dir> [--data_dir <tfds data dir>]
"""


@dataclasses.dataclass
class SpairConfig(tfds.core.BuilderConfig):
    layout: str = "large"


def _points(value, path: epath.Path, key: str) -> np.ndarray:
    try:
        pts = np.asarray(value, np.float32).reshape(-1, 2)
    except (TypeError, ValueError) as e:
        raise common.AnnotationError(f"{path}: key {key!r} is not a list of [x, y] ({e}).") from None
    return pts


def _box(value, path: epath.Path, key: str) -> np.ndarray:
    try:
        box = np.asarray(value, np.float32).reshape(4)
    except (TypeError, ValueError) as e:
        raise common.AnnotationError(f"{path}: key {key!r} is not [x1, y1, x2, y2] ({e}).") from None
    return box


def parse_pair(path: epath.Path) -> dict:
    """Reads one pair JSON into our fields (A = trg, B = src); errors name the file and the key."""
    ann = common.read_json(path, REQUIRED_KEYS)
    category = ann["category"]
    if category not in CATEGORIES:
        raise common.AnnotationError(f"{path}: unknown category {category!r} (expected one of {CATEGORIES}).")
    kp_a, kp_b = _points(ann["trg_kps"], path, "trg_kps"), _points(ann["src_kps"], path, "src_kps")
    if kp_a.shape != kp_b.shape:
        raise common.AnnotationError(f"{path}: trg_kps has {len(kp_a)} points, src_kps {len(kp_b)}.")
    kps_ids = np.asarray(ann.get("kps_ids", np.arange(len(kp_a))), np.int32).reshape(-1)
    out = {"category": category, "trg_imname": str(ann["trg_imname"]), "src_imname": str(ann["src_imname"]),
           "keypoints_a": kp_a, "keypoints_b": kp_b, "kps_ids": kps_ids,
           "bbox_a": _box(ann["trg_bndbox"], path, "trg_bndbox"), "bbox_b": _box(ann["src_bndbox"], path, "src_bndbox"),
           "pose_a": _int(ann, "trg_pose", path), "pose_b": _int(ann, "src_pose", path)}
    for k in INT_METADATA:
        out[k] = _int(ann, k, path)
    return out


def _int(ann: dict, key: str, path: epath.Path) -> int:
    """Optional integer metadata (-1 when absent)."""
    try:
        return int(ann.get(key, -1))
    except (TypeError, ValueError):
        raise common.AnnotationError(f"{path}: key {key!r} should be an integer, got {ann[key]!r}.") from None


def generate_pairs(root: epath.Path, layout: str, split: str, skip_corrupt: bool = False):
    """Yields (key, example) for one split of one layout. skip_corrupt: counted skip of undecodable images."""
    spair = root / "SPair-71k"
    layout_file = spair / "Layout" / layout / f"{SPLITS[split]}.txt"
    if not layout_file.exists():
        raise common.DatasetFilesError(f"spair71k: layout file {layout_file} is missing.\n{INSTRUCTIONS}")
    lines = [(i, s.strip()) for i, s in enumerate(layout_file.read_text().splitlines(), start=1) if s.strip()]
    skipper = common.CorruptSkipper(NAME, f"{layout}/{split}", len(lines), allow=skip_corrupt)
    for line_no, name in lines:
        where = f"{layout_file}, line {line_no}"
        if ":" not in name or name.count("-") < 2:
            raise common.AnnotationError(f"{where}: expected '<pairid>-<src>-<trg>:<category>', got {name!r}.")
        json_path = spair / "PairAnnotation" / SPLITS[split] / f"{name}.json"
        if not json_path.exists():
            raise common.DatasetFilesError(f"{where}: pair annotation {json_path} does not exist.")
        ann = parse_pair(json_path)
        path_a = spair / "JPEGImages" / ann["category"] / ann["trg_imname"]
        path_b = spair / "JPEGImages" / ann["category"] / ann["src_imname"]
        try:
            image_a, _ = common.read_image(path_a, str(json_path))
            image_b, _ = common.read_image(path_b, str(json_path))
        except common.CorruptImageError as e:
            skipper.skip(e)
            continue
        pair_id = f"{SPLITS[split]}/{name}"
        example = {k: v for k, v in ann.items() if k not in ("trg_imname", "src_imname")}
        example.update({"pair_id": pair_id, "image_a": image_a, "image_b": image_b, "flip": 0,
                        "category": CATEGORIES.index(ann["category"])})
        yield pair_id, example
    skipper.report()


class Builder(tfds.core.GeneratorBasedBuilder):
    """SPair-71k pairs (A = trg, B = src) with boxes and metadata; configs 'large' and 'small'."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
    BUILDER_CONFIGS = [
        SpairConfig(name="large", layout="large", description="Layout/large: 53,340 / 5,384 / 12,234 pairs."),
        SpairConfig(name="small", layout="small", description="Layout/small: the smaller benchmark layout."),
    ]
    DEFAULT_BUILDER_CONFIG_NAME = "large"

    def _info(self) -> tfds.core.DatasetInfo:
        scalar = lambda: tfds.features.Scalar(dtype=np.int32)  # noqa: E731
        extra = {"bbox_a": tfds.features.Tensor(shape=(4,), dtype=np.float32),
                 "bbox_b": tfds.features.Tensor(shape=(4,), dtype=np.float32),
                 "kps_ids": tfds.features.Tensor(shape=(None,), dtype=np.int32),
                 "pose_a": scalar(), "pose_b": scalar(), **{k: scalar() for k in INT_METADATA}}
        return self.dataset_info_from_configs(
            features=pair_features(CATEGORIES, extra),
            homepage="https://cvlab.postech.ac.kr/research/SPair-71k/",
            description="SPair-71k pairs; A = SPair's trg (comparison image), B = src.")

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        root = common.find_dataset_root(dl_manager.manual_dir, NAME, ["SPair-71k/Layout", "SPair-71k/JPEGImages"],
                                        INSTRUCTIONS)
        layout = self.builder_config.layout
        return {split: self._generate_examples(root, layout, split, skip_corrupt=split == "train")
                for split in SPLITS}

    def _generate_examples(self, root, layout, split, skip_corrupt=False):
        return generate_pairs(root, layout, split, skip_corrupt)
