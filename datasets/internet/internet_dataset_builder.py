"""tfds builder for the Internet co-segmentation dataset (Rubinstein et al., CVPR 2013, "Object Discovery").

Single images with the class label (the weak supervision) and, where the kit has one, a binary ground-truth
mask. Split `full`: the full Airplane/Car/Horse sets (training; some images have no mask, `has_mask=False`
and an all-zero mask); split `subset100`: the 100-image evaluation subsets Airplane100/Car100/Horse100
(`subset='100'`), on which P and J are reported. Pairs and triplets are drawn within a class by the input
pipeline, not here.
"""
from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from macosnet_datasets import common

NAME = "internet"
CLASSES = ("Airplane", "Car", "Horse")
CATEGORIES = tuple(c.lower() for c in CLASSES)
SPLITS = {"full": "", "subset100": "100"}  # split -> folder suffix

INSTRUCTIONS = """\
Download ObjectDiscovery-data.zip from http://people.csail.mit.edu/mrub/ObjectDiscovery/ and extract it:

  <manual_dir>/internet/
      Data/Airplane/*.jpg      Data/Airplane/GroundTruth/<same stem>.png
      Data/Car/...             Data/Horse/...
      Data/Airplane100/*.jpg   Data/Airplane100/GroundTruth/<same stem>.png
      Data/Car100/...          Data/Horse100/...

Build with
  python -m macosnet_datasets.build internet --manual_dir <manual_dir> [--data_dir <tfds data dir>]
"""


def generate_images(data_dir: epath.Path, split: str, skip_corrupt: bool = False):
    """Yields (key, example) for split 'full' or 'subset100' of `Data/`.

    skip_corrupt: skip an undecodable image (or mask) with a counted warning instead of raising.
    """
    suffix = SPLITS[split]
    items = []
    for c, cls in enumerate(CLASSES):
        folder = data_dir / f"{cls}{suffix}"
        if not folder.is_dir():
            raise common.DatasetFilesError(f"internet: folder {folder} is missing.\n{INSTRUCTIONS}")
        for p in sorted(folder.iterdir()):
            if p.suffix.lower() in common.IMAGE_SUFFIXES and not p.is_dir():
                items.append((c, p))
    skipper = common.CorruptSkipper(NAME, split, len(items), allow=skip_corrupt)
    for c, path in items:
        image_id = f"{path.parent.name}/{path.stem}"
        mask_path = path.parent / "GroundTruth" / f"{path.stem}.png"
        try:
            image, size = common.read_image(path)
            has_mask = mask_path.exists()
            mask = common.read_mask(mask_path) if has_mask else np.zeros(size, np.uint8)
        except common.CorruptImageError as e:
            skipper.skip(e)
            continue
        if mask.shape != size:
            raise common.AnnotationError(f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but image {path} "
                                         f"is {size[1]}x{size[0]}.")
        yield image_id, {"image_id": image_id, "image": image, "mask": mask, "has_mask": has_mask,
                         "category": c, "subset": "100" if suffix else "full"}
    skipper.report()


class Builder(tfds.core.GeneratorBasedBuilder):
    """Internet images with class labels and masks; splits 'full' and 'subset100'."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "image_id": tfds.features.Text(),
                "image": tfds.features.Image(shape=(None, None, 3)),
                "mask": tfds.features.Tensor(shape=(None, None), dtype=np.uint8, encoding=tfds.features.Encoding.ZLIB),
                "has_mask": tfds.features.Scalar(dtype=np.bool_),
                "category": tfds.features.ClassLabel(names=list(CATEGORIES)),
                "subset": tfds.features.Text(),
            }),
            homepage="http://people.csail.mit.edu/mrub/ObjectDiscovery/",
            description="Internet (Object Discovery) images: class label, binary mask where available.")

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        root = common.find_dataset_root(dl_manager.manual_dir, NAME, ["Data/Airplane"], INSTRUCTIONS)
        return {split: self._generate_examples(root / "Data", split, skip_corrupt=split == "full")
                for split in SPLITS}

    def _generate_examples(self, data_dir, split, skip_corrupt=False):
        return generate_images(data_dir, split, skip_corrupt)
