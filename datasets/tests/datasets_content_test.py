"""Checks what the builders store against independent readings of the dummy files, and bad-input handling.

The tfds harness tests (`*_dataset_builder_test.py`) check counts, shapes and dtypes; these tests check the
values (A/B roles, keypoint order, flow orientation, masks), the manual-dir search, the installed package
name, and that every kind of bad input gives an error naming the file (and row), or a counted skip where
skipping is the documented behaviour.
"""
import csv
import json
import logging
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402
from etils import epath  # noqa: E402
from PIL import Image  # noqa: E402

import macosnet_datasets  # noqa: E402
from macosnet_datasets import common  # noqa: E402
from macosnet_datasets.internet import internet_dataset_builder as internet  # noqa: E402
from macosnet_datasets.pf_pascal import pf_pascal_dataset_builder as pf_pascal  # noqa: E402
from macosnet_datasets.pf_willow import pf_willow_dataset_builder as pf_willow  # noqa: E402
from macosnet_datasets.spair71k import spair71k_dataset_builder as spair71k  # noqa: E402
from macosnet_datasets.tss import tss_dataset_builder as tss  # noqa: E402

DATASETS_DIR = Path(__file__).resolve().parents[1]
DUMMY = {n: DATASETS_DIR / n / "dummy_data" for n in macosnet_datasets.BUILDER_NAMES}


def copy_dummy(name: str, tmp_path: Path, extra_level: str = "") -> Path:
    """Copies <name>/dummy_data to <tmp>/manual/<name>/<extra_level>/ and returns <tmp>/manual."""
    manual = tmp_path / "manual"
    shutil.copytree(DUMMY[name], manual / name / extra_level)
    return manual


def pil_rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def decode(image) -> np.ndarray:
    """What a builder hands to tfds.features.Image (file bytes or an array) as an (H, W, 3) array."""
    if isinstance(image, bytes):
        return tfds.features.Image(shape=(None, None, 3)).decode_example_np(image)
    return image


# ------------------------------------------------------------------------------------------------------------
# Package and dummy data.


def test_installed_package_imports_and_registers(tmp_path):
    """`import macosnet_datasets` works from any folder (installed name) and registers all five builders."""
    code = ("import macosnet_datasets, tensorflow_datasets as tfds; "
            "print(macosnet_datasets.__file__); "
            "print(all(tfds.builder_cls(n) for n in macosnet_datasets.BUILDER_NAMES))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert out.returncode == 0, out.stderr[-2000:]
    file, ok = out.stdout.split()
    assert Path(file) == DATASETS_DIR / "__init__.py"
    assert ok == "True"


def test_dummy_data_is_what_the_script_writes(tmp_path):
    """The committed dummy data is reproducible: same files; same bytes for text, PNG and .flo files."""
    sys.path.insert(0, str(DATASETS_DIR))
    try:
        import make_dummy_data
    finally:
        sys.path.pop(0)
    make_dummy_data.main(out=tmp_path)
    for name, committed in DUMMY.items():
        fresh = tmp_path / name / "dummy_data"
        files = sorted(p.relative_to(committed) for p in committed.rglob("*") if p.is_file())
        assert files == sorted(p.relative_to(fresh) for p in fresh.rglob("*") if p.is_file()), name
        for rel in files:
            if rel.suffix != ".jpg":  # JPEG bytes may differ between Pillow versions
                assert (committed / rel).read_bytes() == (fresh / rel).read_bytes(), rel
        assert sum((committed / r).stat().st_size for r in files) < 64 * 1024, f"{name} dummy data too big"


# ------------------------------------------------------------------------------------------------------------
# Values.


def test_pf_pascal_build_with_extra_level_and_values(tmp_path):
    """Full tfds build (tfrecord) from a manual dir with one extra folder level; values match the CSVs."""
    manual = copy_dummy("pf_pascal", tmp_path, extra_level="unzipped")
    builder = pf_pascal.Builder(data_dir=str(tmp_path / "data"))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
    assert builder.info.file_format.value == "tfrecord"
    test = list(tfds.as_numpy(builder.as_dataset(split="test")))
    raw = {ex["pair_id"].decode(): ex for ex in tfds.as_numpy(builder.as_dataset(
        split="test", decoders={"image_a": tfds.decode.SkipDecoding(), "image_b": tfds.decode.SkipDecoding()}))}
    rows = list(csv.DictReader((DUMMY["pf_pascal"] / "image_pairs" / "test_pairs.csv").open()))
    assert len(test) == len(rows)
    by_id = {ex["pair_id"].decode(): ex for ex in test}
    for line, row in enumerate(rows, start=1):
        stem = lambda k: Path(row[k]).stem  # noqa: E731
        ex = by_id[f"test_{line:05d}_{stem('source_image')}_{stem('target_image')}"]
        xa, ya, xb, yb = ([float(v) for v in row[k].split(";")] for k in ("XA", "YA", "XB", "YB"))
        np.testing.assert_array_equal(ex["keypoints_a"], np.stack([xa, ya], -1).astype(np.float32))
        np.testing.assert_array_equal(ex["keypoints_b"], np.stack([xb, yb], -1).astype(np.float32))
        assert ex["category"] == int(row["class"]) - 1
        assert ex["flip"] == 0
        # A = source_image, stored as the original JPEG bytes (TF and PIL decode JPEG slightly differently).
        pair_id = ex["pair_id"].decode()
        assert raw[pair_id]["image_a"] == (DUMMY["pf_pascal"] / row["source_image"]).read_bytes()
        assert raw[pair_id]["image_b"] == (DUMMY["pf_pascal"] / row["target_image"]).read_bytes()
        assert ex["image_a"].shape == pil_rgb(DUMMY["pf_pascal"] / row["source_image"]).shape
    train = list(tfds.as_numpy(builder.as_dataset(split="train")))
    assert sorted(int(ex["flip"]) for ex in train) == [0, 0, 1, 1]
    assert all(ex["keypoints_a"].shape == (0, 2) for ex in train)


def test_pf_willow_positional_rows():
    """Positional list: 10 X of A, 10 Y of A, 10 X of B, 10 Y of B; category = class folder."""
    root = epath.Path(DUMMY["pf_willow"])
    csv_path = root / "test_pairs_pf.csv"
    examples = dict(pf_willow.generate_pairs(root, csv_path, positional=True))
    rows = list(csv.reader(Path(csv_path).open()))[1:]
    assert len(examples) == len(rows) == 3
    for ex, row in zip(examples.values(), rows):
        v = np.asarray(row[2:], np.float32).reshape(4, 10)
        np.testing.assert_array_equal(ex["keypoints_a"], v[:2].T)
        np.testing.assert_array_equal(ex["keypoints_b"], v[2:].T)
        assert pf_willow.CATEGORIES[ex["category"]] == Path(row[0]).parent.name


def test_tss_flo_reader_and_values():
    """.flo read back equals what the independent writer stored; flow lies on B's grid; masks are 0/1."""
    tss_dir = epath.Path(DUMMY["tss"]) / "TSS_CVPR2016"
    examples = dict(tss.generate_pairs(tss_dir, tss_dir / "data.csv"))
    assert len(examples) == 6
    for key, ex in examples.items():
        subset, pair, flow_name = key.replace("_flip", "").split("/")
        folder = Path(tss_dir) / subset / pair
        raw = (folder / f"{flow_name}.flo").read_bytes()
        w, h = struct.unpack("<ii", raw[4:12])
        np.testing.assert_array_equal(ex["flow"], np.frombuffer(raw[12:], "<f4").reshape(h, w, 2))
        k = flow_name[-1]
        other = "2" if k == "1" else "1"
        np.testing.assert_array_equal(decode(ex["image_b"]), pil_rgb(folder / f"image{k}.png"))
        np.testing.assert_array_equal(decode(ex["image_a"]), pil_rgb(folder / f"image{other}.png"))
        np.testing.assert_array_equal(ex["mask_b"], np.asarray(Image.open(folder / f"mask{k}.png")) // 255)
        assert ex["flow"].shape[:2] == ex["mask_b"].shape == decode(ex["image_b"]).shape[:2]
        assert set(np.unique(ex["mask_a"])) <= {0, 1}
        assert ex["flip"] == (subset == "PASCAL") and ex["subset"] == subset
        # unknown flow (outside the object in the dummy kit) is kept as stored
        assert np.all(ex["flow"][ex["mask_b"] == 0] == np.float32(1e10))


def test_tss_without_data_csv_derives_both_directions(tmp_path):
    manual = copy_dummy("tss", tmp_path)
    (manual / "tss" / "TSS_CVPR2016" / "data.csv").unlink()
    builder = tss.Builder(data_dir=str(tmp_path / "data"))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
    examples = list(tfds.as_numpy(builder.as_dataset(split="test")))
    assert len(examples) == 6
    assert all(ex["flip"] == 0 for ex in examples)
    assert all(ex["flow"].shape[:2] == ex["image_b"].shape[:2] == ex["mask_b"].shape for ex in examples)
    assert sorted(ex["subset"].decode() for ex in examples) == sorted(tss.SUBSETS * 2)


def test_spair_a_is_trg():
    root = epath.Path(DUMMY["spair71k"])
    examples = dict(spair71k.generate_pairs(root, "large", "test"))
    assert len(examples) == 2
    for key, ex in examples.items():
        ann = json.loads((Path(root) / "SPair-71k" / "PairAnnotation" / f"{key}.json").read_text())
        np.testing.assert_array_equal(ex["keypoints_a"], np.asarray(ann["trg_kps"], np.float32))
        np.testing.assert_array_equal(ex["keypoints_b"], np.asarray(ann["src_kps"], np.float32))
        np.testing.assert_array_equal(ex["bbox_a"], np.asarray(ann["trg_bndbox"], np.float32))
        np.testing.assert_array_equal(ex["bbox_b"], np.asarray(ann["src_bndbox"], np.float32))
        image_a = Path(root) / "SPair-71k" / "JPEGImages" / ann["category"] / ann["trg_imname"]
        np.testing.assert_array_equal(decode(ex["image_a"]), pil_rgb(image_a))
        assert ex["mirror"] == ann["mirror"] and ex["pose_a"] == ann["trg_pose"]
        assert spair71k.CATEGORIES[ex["category"]] == ann["category"]


def test_internet_masks_and_missing_mask():
    data = epath.Path(DUMMY["internet"]) / "Data"
    full = dict(internet.generate_images(data, "full"))
    assert len(full) == 6
    for image_id, ex in full.items():
        folder, stem = image_id.split("/")
        gt = Path(data) / folder / "GroundTruth" / f"{stem}.png"
        assert ex["has_mask"] == gt.exists()
        expected = np.asarray(Image.open(gt)) // 255 if gt.exists() else np.zeros(ex["mask"].shape, np.uint8)
        np.testing.assert_array_equal(ex["mask"], expected)
        assert ex["mask"].shape == decode(ex["image"]).shape[:2] and ex["subset"] == "full"
    assert sum(not ex["has_mask"] for ex in full.values()) == 1
    sub = dict(internet.generate_images(data, "subset100"))
    assert len(sub) == 3 and all(ex["subset"] == "100" for ex in sub.values())


def test_keypoint_padding_removed():
    kp_a, kp_b = common.keypoints_from_xy(np.float32([1, -1, 3]), np.float32([4, 5, 6]),
                                          np.float32([7, 8, 9]), np.float32([1, 2, -1]), where="x")
    np.testing.assert_array_equal(kp_a, [[1, 4]])
    np.testing.assert_array_equal(kp_b, [[7, 1]])


# ------------------------------------------------------------------------------------------------------------
# Bad input.


def test_missing_manual_dir_names_path_and_instructions(tmp_path):
    missing = tmp_path / "nowhere"
    builder = pf_pascal.Builder(data_dir=str(tmp_path / "data"))
    with pytest.raises(Exception) as e:
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(missing)))
    assert str(missing) in str(e.value) and "PF-dataset-PASCAL/JPEGImages" in str(e.value)


@pytest.mark.parametrize("builder_cls", [pf_pascal.Builder, pf_willow.Builder, tss.Builder, spair71k.Builder,
                                         internet.Builder])
def test_wrong_manual_dir_names_path_and_instructions(tmp_path, builder_cls):
    (tmp_path / "manual" / "something_else").mkdir(parents=True)
    builder = builder_cls(data_dir=str(tmp_path / "data"))
    with pytest.raises(common.DatasetFilesError) as e:
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path / "manual")))
    msg = str(e.value)
    assert str(tmp_path / "manual") in msg and builder_cls.MANUAL_DOWNLOAD_INSTRUCTIONS in msg


def corrupt(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:40])  # a truncated JPEG/PNG header


def test_corrupt_image_in_test_split_is_an_error_naming_file_and_row(tmp_path):
    manual = copy_dummy("pf_pascal", tmp_path)
    root = epath.Path(manual / "pf_pascal")
    corrupt(Path(root) / "PF-dataset-PASCAL" / "JPEGImages" / "2009_000003.jpg")
    csv_path = root / "image_pairs" / "test_pairs.csv"
    with pytest.raises(common.CorruptImageError, match=r"test_pairs\.csv, line 2: cannot decode image .*2009_000003"):
        list(pf_pascal.generate_pairs(root, "test", csv_path))


def test_corrupt_image_in_train_split_is_skipped_with_counted_warning(tmp_path, caplog):
    manual = copy_dummy("pf_pascal", tmp_path)
    root = epath.Path(manual / "pf_pascal")
    corrupt(Path(root) / "PF-dataset-PASCAL" / "JPEGImages" / "2009_000003.jpg")
    with caplog.at_level(logging.WARNING, logger="macosnet_datasets"):
        got = list(pf_pascal.generate_pairs(root, "train", root / "image_pairs" / "train_pairs.csv",
                                            skip_corrupt=True))
    assert len(got) == 2  # the two rows (flip 0/1) of the pair with the broken image are skipped
    assert "skipped 2 of 4 examples" in caplog.text and "2009_000003.jpg" in caplog.text


def test_too_many_corrupt_images_is_an_error(tmp_path):
    manual = copy_dummy("internet", tmp_path)
    data = manual / "internet" / "Data"
    for p in data.glob("*/*.jpg"):
        corrupt(p)
    with pytest.raises(common.CorruptImageError, match="all 6 examples have unreadable images"):
        list(internet.generate_images(epath.Path(data), "full", skip_corrupt=True))
    skipper = common.CorruptSkipper("internet", "full", 1000, allow=True, max_fraction=0.002, min_allowed=1)
    assert skipper.limit == 2
    skipper.skip(common.CorruptImageError("a"))
    skipper.skip(common.CorruptImageError("b"))
    with pytest.raises(common.CorruptImageError, match="more than 2 unreadable images"):
        skipper.skip(common.CorruptImageError("c"))


def test_missing_csv_column_names_file_and_column(tmp_path):
    manual = copy_dummy("pf_pascal", tmp_path)
    root = epath.Path(manual / "pf_pascal")
    csv_path = Path(root) / "image_pairs" / "val_pairs.csv"
    csv_path.write_text(csv_path.read_text().replace(",YB\n", ",YYB\n", 1))
    with pytest.raises(common.AnnotationError, match=r"val_pairs\.csv: missing CSV column\(s\) \['YB'\]"):
        list(pf_pascal.generate_pairs(root, "validation", epath.Path(csv_path)))


def test_malformed_keypoint_field_names_file_row_and_column(tmp_path):
    manual = copy_dummy("pf_pascal", tmp_path)
    root = epath.Path(manual / "pf_pascal")
    csv_path = Path(root) / "image_pairs" / "test_pairs.csv"
    lines = csv_path.read_text().splitlines()
    fields = lines[2].split(",")
    fields[3] = fields[3].replace(";", ";abc;", 1)
    lines[2] = ",".join(fields)
    csv_path.write_text("\n".join(lines) + "\n")
    with pytest.raises(common.AnnotationError, match=r"test_pairs\.csv, line 3, column 'XA': malformed"):
        list(pf_pascal.generate_pairs(root, "test", epath.Path(csv_path)))


def test_willow_short_row_names_file_and_line(tmp_path):
    manual = copy_dummy("pf_willow", tmp_path)
    csv_path = manual / "pf_willow" / "test_pairs_pf.csv"
    lines = csv_path.read_text().splitlines()
    lines[1] = ",".join(lines[1].split(",")[:30])
    csv_path.write_text("\n".join(lines) + "\n")
    with pytest.raises(common.AnnotationError, match=r"test_pairs_pf\.csv, line 2: 30 fields, expected at least 42"):
        list(pf_willow.generate_pairs(epath.Path(manual / "pf_willow"), epath.Path(csv_path), positional=True))


def test_json_without_key_names_file_and_key(tmp_path):
    manual = copy_dummy("spair71k", tmp_path)
    root = manual / "spair71k"
    path = sorted((root / "SPair-71k" / "PairAnnotation" / "val").glob("*.json"))[0]
    ann = json.loads(path.read_text())
    del ann["trg_kps"]
    path.write_text(json.dumps(ann))
    with pytest.raises(common.AnnotationError, match=rf"{path.name}: missing JSON key\(s\) \['trg_kps'\]"):
        list(spair71k.generate_pairs(epath.Path(root), "large", "validation"))


def test_flo_with_wrong_magic_or_size_is_an_error(tmp_path):
    bad = tmp_path / "bad.flo"
    bad.write_bytes(struct.pack("<fii", 1.0, 2, 2) + b"\0" * 32)
    with pytest.raises(common.AnnotationError, match=r"bad\.flo: not a Middlebury \.flo file"):
        tss.read_flo(epath.Path(bad))
    bad.write_bytes(struct.pack("<fii", 202021.25, 3, 2) + b"\0" * 32)
    with pytest.raises(common.AnnotationError, match=r"bad\.flo: header says 3x2"):
        tss.read_flo(epath.Path(bad))


def test_tss_flow_not_on_b_grid_is_an_error(tmp_path):
    manual = copy_dummy("tss", tmp_path)
    tss_dir = manual / "tss" / "TSS_CVPR2016"
    data = tss_dir / "data.csv"
    lines = data.read_text().splitlines()
    lines[1] = lines[1].replace(",1,", ",2,", 1)  # flow2 lies on image2, which is A in this row
    data.write_text("\n".join(lines) + "\n")
    with pytest.raises(common.AnnotationError, match=r"data\.csv, line 2: flow2\.flo lies on image2"):
        list(tss.generate_pairs(epath.Path(tss_dir), epath.Path(data)))


def test_read_image_keeps_rgb_or_grey_bytes_and_converts_other_modes(tmp_path):
    grey, rgba = tmp_path / "g.png", tmp_path / "a.png"
    Image.fromarray(np.arange(12, dtype=np.uint8).reshape(3, 4) * 20).save(grey)
    Image.fromarray(np.full((3, 4, 4), 200, np.uint8)).save(rgba)
    data, size = common.read_image(epath.Path(grey))
    assert data == grey.read_bytes() and size == (3, 4)
    np.testing.assert_array_equal(decode(data)[..., 1], np.arange(12).reshape(3, 4) * 20)  # grey -> RGB by tfds
    data, size = common.read_image(epath.Path(rgba))
    assert isinstance(data, np.ndarray) and data.shape == (3, 4, 3) and size == (3, 4)


def test_class_out_of_range_names_file_and_line(tmp_path):
    manual = copy_dummy("pf_pascal", tmp_path)
    csv_path = manual / "pf_pascal" / "image_pairs" / "train_pairs.csv"
    csv_path.write_text(csv_path.read_text().replace(",1,0\n", ",21,0\n", 1))
    with pytest.raises(common.AnnotationError, match=r"train_pairs\.csv, line 2: class 21 outside 1\.\.20"):
        list(pf_pascal.generate_pairs(epath.Path(manual / "pf_pascal"), "train", epath.Path(csv_path)))


def test_build_command(tmp_path, capsys):
    from macosnet_datasets import build
    manual = copy_dummy("pf_willow", tmp_path)
    build.main(["pf_willow/macosnet", "--manual_dir", str(manual), "--data_dir", str(tmp_path / "data")])
    assert "pf_willow/macosnet: test 2" in capsys.readouterr().out


def test_positional_csv_without_header_line(tmp_path):
    """Positional lists (PF-WILLOW, TSS data.csv) may come without a header line: no row is lost."""
    manual = copy_dummy("pf_willow", tmp_path)
    csv_path = manual / "pf_willow" / "test_pairs_pf.csv"
    with_header = dict(pf_willow.generate_pairs(epath.Path(manual / "pf_willow"), epath.Path(csv_path), True))
    csv_path.write_text("".join(csv_path.read_text().splitlines(keepends=True)[1:]))
    without = dict(pf_willow.generate_pairs(epath.Path(manual / "pf_willow"), epath.Path(csv_path), True))
    assert len(without) == len(with_header) == 3
    for a, b in zip(with_header.values(), without.values()):
        np.testing.assert_array_equal(a["keypoints_a"], b["keypoints_a"])
