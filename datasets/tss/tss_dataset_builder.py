"""tfds builder for TSS (Taniai et al., CVPR 2016, "Joint recovery of dense correspondence and cosegmentation").

Every pair folder `TSS_CVPR2016/<subset>/<pair>/` holds image1/2.png, mask1/2.png and flow1/2.flo, where
flowN lies on imageN's pixel grid and points into the other image. One example = one pair direction:
B = the image whose grid carries the flow, A = the image the flow points into (SPEC §8: prediction is a dense
flow on B's grid; PCK is scored against A's size). The directions come from `data.csv`
(`imageA,imageB,flow_dir,flip,category`: 800 rows) or, when it is absent, both directions of every folder.
Images and flows are stored as in the files (no flip applied): `flip=1` tells the pipeline to mirror image A.
Unknown flow values (|v| > 1e9 in the kit) are kept as stored.
"""
from __future__ import annotations

import struct

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from macosnet_datasets import common

NAME = "tss"
SUBSETS = ("FG3DCar", "JODS", "PASCAL")
FLO_MAGIC = 202021.25

INSTRUCTIONS = """\
Download TSS from http://taniai.space/projects/cvpr16_dccs/ ("TSS_CVPR2016.zip") and, optionally, the
weakalign pair list data.csv (imageA,imageB,flow_dir,flip,category; 800 rows). Place them as

  <manual_dir>/tss/
      TSS_CVPR2016/FG3DCar/<pair>/{image1.png,image2.png,mask1.png,mask2.png,flow1.flo,flow2.flo}
      TSS_CVPR2016/JODS/<pair>/...
      TSS_CVPR2016/PASCAL/<pair>/...
      TSS_CVPR2016/data.csv        (optional; also found next to TSS_CVPR2016/)

Without data.csv both directions of every pair folder are generated (flip = 0). Build with
  python -m macosnet_datasets.build tss --manual_dir <manual_dir> [--data_dir <tfds data dir>]
"""


def read_flo(path: epath.Path) -> np.ndarray:
    """Reads a Middlebury .flo file -> float32 (H, W, 2) (dx, dy).

    Layout: float32 magic 202021.25, int32 width, int32 height, then H*W*2 float32, row-major, little endian.
    Raises AnnotationError naming the file on a wrong magic number or a truncated file.
    """
    data = epath.Path(path).read_bytes()
    if len(data) < 12:
        raise common.AnnotationError(f"{path}: too short for a .flo header ({len(data)} bytes).")
    magic, width, height = struct.unpack("<fii", data[:12])
    if magic != np.float32(FLO_MAGIC):
        raise common.AnnotationError(f"{path}: not a Middlebury .flo file (magic {magic!r}, expected {FLO_MAGIC}).")
    if width <= 0 or height <= 0 or len(data) != 12 + 8 * width * height:
        raise common.AnnotationError(f"{path}: header says {width}x{height} flow ({12 + 8 * width * height} "
                                     f"bytes) but the file has {len(data)} bytes.")
    return np.frombuffer(data, "<f4", offset=12).reshape(height, width, 2).astype(np.float32)


def _relative(value: str) -> str:
    """'…/TSS_CVPR2016/PASCAL/x/image1.png' or 'PASCAL/x/image1.png' -> 'PASCAL/x/image1.png'."""
    parts = [p for p in value.replace("\\", "/").split("/") if p and p != "."]
    if "TSS_CVPR2016" in parts:
        parts = parts[parts.index("TSS_CVPR2016") + 1:]
    return "/".join(parts)


def list_directions(tss_dir: epath.Path, csv_path: epath.Path | None):
    """[(where, rel image A, rel image B, flow_dir, flip)], from data.csv or derived from the folders."""
    if csv_path is not None:
        _, rows = common.read_csv_rows(csv_path, min_columns=4, numeric_column=2)
        out = []
        for line, f in rows:
            where = f"{csv_path}, line {line}"
            flow_dir = common.parse_int(f[2], where + ", column 3 (flow_dir)")
            if flow_dir not in (1, 2):
                raise common.AnnotationError(f"{where}: flow_dir must be 1 or 2, got {flow_dir}.")
            out.append((where, _relative(f[0]), _relative(f[1]), flow_dir,
                        common.parse_int(f[3], where + ", column 4 (flip)")))
        return out
    out = []
    for subset in SUBSETS:
        if not (tss_dir / subset).is_dir():
            raise common.DatasetFilesError(f"tss: subset folder {tss_dir / subset} is missing.\n{INSTRUCTIONS}")
        for pair in sorted(p.name for p in (tss_dir / subset).iterdir() if p.is_dir()):
            where = f"{tss_dir / subset / pair}"
            out.append((where, f"{subset}/{pair}/image2.png", f"{subset}/{pair}/image1.png", 1, 0))
            out.append((where, f"{subset}/{pair}/image1.png", f"{subset}/{pair}/image2.png", 2, 0))
    return out


def generate_pairs(tss_dir: epath.Path, csv_path: epath.Path | None):
    """Yields (key, example) for the test split (every direction; unreadable files are errors)."""
    for where, rel_a, rel_b, flow_dir, flip in list_directions(tss_dir, csv_path):
        subset = rel_b.split("/")[0]
        if subset not in SUBSETS:
            raise common.AnnotationError(f"{where}: image path {rel_b!r} does not start with one of {SUBSETS}.")
        path_a, path_b = tss_dir / rel_a, tss_dir / rel_b
        folder = path_b.parent
        if path_a.parent != folder:
            raise common.AnnotationError(f"{where}: images {rel_a!r} and {rel_b!r} are not in one pair folder.")
        k_b = path_b.stem[-1]  # image1 -> '1'
        if k_b != str(flow_dir):
            raise common.AnnotationError(
                f"{where}: flow{flow_dir}.flo lies on image{flow_dir}, but image B (the flow's grid) is {rel_b!r}.")
        image_a, size_a = common.read_image(path_a, where)
        image_b, size_b = common.read_image(path_b, where)
        flow_path = folder / f"flow{flow_dir}.flo"
        if not flow_path.exists():
            raise common.DatasetFilesError(f"{where}: flow file {flow_path} does not exist.")
        flow = read_flo(flow_path)
        if flow.shape[:2] != size_b:
            raise common.AnnotationError(f"{where}: {flow_path} is {flow.shape[1]}x{flow.shape[0]} but image B "
                                         f"{path_b} is {size_b[1]}x{size_b[0]} (flow must lie on B's grid).")
        mask_a = common.read_mask(folder / f"mask{path_a.stem[-1]}.png", where)
        mask_b = common.read_mask(folder / f"mask{k_b}.png", where)
        for m, size, p in ((mask_a, size_a, path_a), (mask_b, size_b, path_b)):
            if m.shape != size:
                raise common.AnnotationError(f"{where}: mask for {p} is {m.shape}, image is {size}.")
        pair_id = f"{subset}/{folder.name}/flow{flow_dir}" + ("_flip" if flip else "")
        yield pair_id, {"pair_id": pair_id, "image_a": image_a, "image_b": image_b, "flow": flow,
                        "mask_a": mask_a, "mask_b": mask_b, "subset": subset, "category": SUBSETS.index(subset),
                        "flip": flip, "keypoints_a": np.zeros((0, 2), np.float32),
                        "keypoints_b": np.zeros((0, 2), np.float32)}


class Builder(tfds.core.GeneratorBasedBuilder):
    """TSS pair directions with dense flow and masks (split 'test')."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS

    def _info(self) -> tfds.core.DatasetInfo:
        zlib = tfds.features.Encoding.ZLIB
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "pair_id": tfds.features.Text(),
                "image_a": tfds.features.Image(shape=(None, None, 3)),
                "image_b": tfds.features.Image(shape=(None, None, 3)),
                "flow": tfds.features.Tensor(shape=(None, None, 2), dtype=np.float32, encoding=zlib),
                "mask_a": tfds.features.Tensor(shape=(None, None), dtype=np.uint8, encoding=zlib),
                "mask_b": tfds.features.Tensor(shape=(None, None), dtype=np.uint8, encoding=zlib),
                "keypoints_a": tfds.features.Tensor(shape=(None, 2), dtype=np.float32),
                "keypoints_b": tfds.features.Tensor(shape=(None, 2), dtype=np.float32),
                "subset": tfds.features.Text(),
                "category": tfds.features.ClassLabel(names=list(SUBSETS)),
                "flip": tfds.features.Scalar(dtype=np.int32),
            }),
            homepage="http://taniai.space/projects/cvpr16_dccs/",
            description="TSS pair directions: flow on B's grid pointing into A, masks, flip flag.")

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        root = common.find_dataset_root(dl_manager.manual_dir, NAME, ["TSS_CVPR2016"], INSTRUCTIONS)
        tss_dir = root / "TSS_CVPR2016"
        csv_path = next((p for p in (tss_dir / "data.csv", root / "data.csv") if p.exists()), None)
        return {"test": self._generate_examples(tss_dir, csv_path)}

    def _generate_examples(self, tss_dir, csv_path):
        return generate_pairs(tss_dir, csv_path)
