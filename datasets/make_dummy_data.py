"""Writes tiny generated dummy data for every builder, in each dataset's exact archive layout.

    python datasets/make_dummy_data.py            # (re)writes datasets/<name>/dummy_data/ for all five
    python datasets/make_dummy_data.py tss spair71k

Why: the builders are tested with `tfds.testing.DatasetBuilderTestCase`, which runs them on
`<builder folder>/dummy_data/` as the manual directory. The pictures are procedurally drawn (coloured
shapes on a flat background), never real photos, and a few hundred bytes each. The output is deterministic,
so re-running the script leaves the committed files unchanged. The split sizes written here are the
`SPLITS` of the builder tests (datasets/tests/).
"""
from __future__ import annotations

import io
import json
import shutil
import struct
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent


def picture(seed: int, height: int, width: int) -> tuple[Image.Image, np.ndarray]:
    """A flat-coloured picture with one ellipse (the 'object') and one rectangle; returns (RGB, 0/1 mask)."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (width, height), tuple(int(c) for c in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(img)
    x0, y0 = rng.integers(1, width // 3), rng.integers(1, height // 3)
    x1, y1 = rng.integers(2 * width // 3, width - 1), rng.integers(2 * height // 3, height - 1)
    rx, ry = rng.integers(0, width // 2), rng.integers(0, height // 2)
    draw.rectangle([rx, ry, rx + width // 5, ry + height // 5], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    draw.ellipse([x0, y0, x1, y1], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    mask = Image.new("L", (width, height), 0)
    ImageDraw.Draw(mask).ellipse([x0, y0, x1, y1], fill=255)
    return img, (np.asarray(mask) > 127).astype(np.uint8)


def save_image(img: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        img.save(path, quality=70)
    else:
        img.save(path)


def save_mask(mask: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask * 255).save(path)


def keypoints(seed: int, n: int, height: int, width: int) -> np.ndarray:
    """(n, 2) xy 1-indexed pixel coordinates inside the picture, rounded to 0.5 px."""
    rng = np.random.default_rng(seed)
    return np.round(np.stack([rng.uniform(1, width, n), rng.uniform(1, height, n)], -1) * 2) / 2


def fmt(values) -> str:
    return ";".join(f"{v:g}" for v in values)


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


OUT = HERE  # where <name>/dummy_data/ is written; main(out=...) redirects it (the determinism test does).


def fresh(name: str) -> Path:
    out = OUT / name / "dummy_data"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    return out


def make_pf_pascal() -> None:
    """PF-dataset-PASCAL/JPEGImages + image_pairs/{train,val,test}_pairs.csv: train 4 rows, val 2, test 3."""
    out = fresh("pf_pascal")
    names = [f"2009_00{i:04d}" for i in range(6)]
    sizes = [(30, 40), (36, 28), (32, 32), (28, 44), (40, 30), (34, 38)]
    for i, (name, (h, w)) in enumerate(zip(names, sizes)):
        save_image(picture(100 + i, h, w)[0], out / "PF-dataset-PASCAL" / "JPEGImages" / f"{name}.jpg")
    rel = lambda i: f"PF-dataset-PASCAL/JPEGImages/{names[i]}.jpg"  # noqa: E731
    train = ["source_image,target_image,class,flip"]
    for a, b, cls in [(0, 1, 1), (2, 3, 12)]:
        train += [f"{rel(a)},{rel(b)},{cls},0", f"{rel(a)},{rel(b)},{cls},1"]
    write_text(out / "image_pairs" / "train_pairs.csv", "\n".join(train) + "\n")
    for fname, pairs in [("val_pairs.csv", [(4, 5, 8), (1, 2, 15)]),
                         ("test_pairs.csv", [(0, 3, 1), (5, 2, 20), (3, 4, 7)])]:
        rows = ["source_image,target_image,class,XA,YA,XB,YB"]
        for k, (a, b, cls) in enumerate(pairs):
            n = 4 + k
            pa = keypoints(10 * a + b, n, *sizes[a])
            pb = keypoints(10 * b + a + 1, n, *sizes[b])
            rows.append(f"{rel(a)},{rel(b)},{cls},{fmt(pa[:, 0])},{fmt(pa[:, 1])},{fmt(pb[:, 0])},{fmt(pb[:, 1])}")
        write_text(out / "image_pairs" / fname, "\n".join(rows) + "\n")


WILLOW_CLASSES = ("car(G)", "duck(S)", "motorbike(M)")


def make_pf_willow() -> None:
    """PF-dataset/<class>/*.png + test_pairs_pf.csv (3 pairs, positional) + test.csv (2 pairs, named)."""
    out = fresh("pf_willow")
    sizes = {}
    for c, cls in enumerate(WILLOW_CLASSES):
        for i in (1, 2):
            h, w = 30 + 2 * c, 36 - 2 * i
            sizes[(cls, i)] = (h, w)
            save_image(picture(200 + 10 * c + i, h, w)[0], out / "PF-dataset" / cls / f"{cls}_{i}.png")
    rel = lambda cls, i: f"PF-dataset/{cls}/{cls}_{i}.png"  # noqa: E731
    header = ["imageA", "imageB"] + [f"{a}{k}" for a in ("XA", "YA", "XB", "YB") for k in range(1, 11)]
    rows = [",".join(header)]
    for c, cls in enumerate(WILLOW_CLASSES):
        pa, pb = keypoints(300 + c, 10, *sizes[(cls, 1)]), keypoints(310 + c, 10, *sizes[(cls, 2)])
        vals = list(pa[:, 0]) + list(pa[:, 1]) + list(pb[:, 0]) + list(pb[:, 1])
        rows.append(",".join([rel(cls, 1), rel(cls, 2)] + [f"{v:g}" for v in vals]))
    write_text(out / "test_pairs_pf.csv", "\n".join(rows) + "\n")
    rows = ["source_image,target_image,class,XA,YA,XB,YB"]
    for c, cls in enumerate(WILLOW_CLASSES[:2]):
        pa, pb = keypoints(320 + c, 10, *sizes[(cls, 2)]), keypoints(330 + c, 10, *sizes[(cls, 1)])
        rows.append(f"{rel(cls, 2)},{rel(cls, 1)},{c + 1},{fmt(pa[:, 0])},{fmt(pa[:, 1])},{fmt(pb[:, 0])},"
                    f"{fmt(pb[:, 1])}")
    write_text(out / "test.csv", "\n".join(rows) + "\n")


def write_flo(path: Path, flow: np.ndarray) -> None:
    """Middlebury .flo: float32 magic 202021.25, int32 width, int32 height, then (dx, dy) float32 per pixel."""
    h, w, _ = flow.shape
    path.write_bytes(struct.pack("<fii", 202021.25, w, h) + flow.astype("<f4").tobytes())


def make_tss() -> None:
    """TSS_CVPR2016/{FG3DCar,JODS,PASCAL}/<pair>/ (one pair each) + data.csv (6 rows, one flipped)."""
    out = fresh("tss")
    rows = ["imageA,imageB,flow_dir,flip,category"]
    for s, (subset, pair) in enumerate([("FG3DCar", "sample001"), ("JODS", "car0001"), ("PASCAL", "aeroplane01")]):
        folder = out / "TSS_CVPR2016" / subset / pair
        folder.mkdir(parents=True)
        shapes = {1: (12, 15 + s), 2: (13, 14)}
        for k, (h, w) in shapes.items():
            img, mask = picture(400 + 10 * s + k, h, w)
            save_image(img, folder / f"image{k}.png")
            save_mask(mask, folder / f"mask{k}.png")
            rng = np.random.default_rng(500 + 10 * s + k)
            flow = rng.uniform(-3, 3, (h, w, 2)).astype(np.float32)
            flow[mask == 0] = 1e10  # unknown flow outside the object, as in the kit
            write_flo(folder / f"flow{k}.flo", flow)
        # flowN lies on imageN (B) and points into the other image (A).
        flip = 1 if subset == "PASCAL" else 0
        rows.append(f"{subset}/{pair}/image2.png,{subset}/{pair}/image1.png,1,{flip},{s + 1}")
        rows.append(f"{subset}/{pair}/image1.png,{subset}/{pair}/image2.png,2,{flip},{s + 1}")
    write_text(out / "TSS_CVPR2016" / "data.csv", "\n".join(rows) + "\n")


SPAIR_CATEGORIES = ("aeroplane", "cat")


def make_spair71k() -> None:
    """SPair-71k/{JPEGImages,ImageAnnotation,Segmentation}/<cat>/, PairAnnotation/<split>/, Layout/{large,small}/.

    large: trn 2, val 1, test 2 pairs; small: trn 1, val 1, test 1 (a subset, as in the real layouts).
    """
    out = fresh("spair71k") / "SPair-71k"
    sizes, imnames = {}, {}
    for c, cat in enumerate(SPAIR_CATEGORIES):
        for i in range(3):
            name = f"2008_00{c}{i:03d}"
            h, w = 28 + 3 * i, 34 - 2 * c
            sizes[name] = (h, w)
            imnames.setdefault(cat, []).append(name)
            img, mask = picture(600 + 10 * c + i, h, w)
            save_image(img, out / "JPEGImages" / cat / f"{name}.jpg")
            save_mask(mask, out / "Segmentation" / cat / f"{name}.png")
            write_text(out / "ImageAnnotation" / cat / f"{name}.json",
                       json.dumps({"filename": f"{name}.jpg", "category": cat, "image_width": w,
                                   "image_height": h, "bndbox": [2, 2, w - 3, h - 3]}))
    pairs = {"trn": [(1, "aeroplane", 0, 1), (2, "cat", 0, 2)], "val": [(3, "aeroplane", 2, 0)],
             "test": [(4, "cat", 1, 2), (5, "aeroplane", 1, 2)]}
    small = {"trn": 1, "val": 1, "test": 1}
    for split, items in pairs.items():
        lines = []
        for pid, cat, i, j in items:
            src, trg = imnames[cat][i], imnames[cat][j]
            line = f"{pid:06d}-{src}-{trg}:{cat}"
            lines.append(line)
            n = 3 + pid % 3
            (hs, ws), (ht, wt) = sizes[src], sizes[trg]
            ann = {
                "pair_id": pid, "filename": line, "src_imname": f"{src}.jpg", "trg_imname": f"{trg}.jpg",
                "src_imsize": [ws, hs, 3], "trg_imsize": [wt, ht, 3], "category": cat,
                "src_bndbox": [1, 2, ws - 2, hs - 1], "trg_bndbox": [2, 1, wt - 1, ht - 3],
                "src_pose": 1, "trg_pose": 2,
                "src_kps": keypoints(700 + pid, n, hs, ws).astype(int).tolist(),
                "trg_kps": keypoints(800 + pid, n, ht, wt).astype(int).tolist(),
                "kps_ids": list(range(n)), "mirror": pid % 2, "viewpoint_variation": 1, "scale_variation": 0,
                "truncation": 0, "occlusion": 1,
            }
            write_text(out / "PairAnnotation" / split / f"{line}.json", json.dumps(ann))
        write_text(out / "Layout" / "large" / f"{split}.txt", "\n".join(lines) + "\n")
        write_text(out / "Layout" / "small" / f"{split}.txt", "\n".join(lines[: small[split]]) + "\n")


INTERNET_CLASSES = ("Airplane", "Car", "Horse")


def make_internet() -> None:
    """Data/{Airplane,Car,Horse}/ (2 images each; Car's second has no mask) and Data/<Class>100/ (1 each)."""
    out = fresh("internet") / "Data"
    for c, cls in enumerate(INTERNET_CLASSES):
        for folder, count in ((cls, 2), (f"{cls}100", 1)):
            for i in range(count):
                stem = f"{cls.lower()}_{len(folder)}{i:04d}"
                img, mask = picture(900 + 10 * c + i + (5 if folder.endswith("100") else 0), 26 + 2 * i, 32)
                save_image(img, out / folder / f"{stem}.jpg")
                if not (cls == "Car" and folder == cls and i == 1):
                    save_mask(mask, out / folder / "GroundTruth" / f"{stem}.png")


MAKERS = {"pf_pascal": make_pf_pascal, "pf_willow": make_pf_willow, "tss": make_tss,
          "spair71k": make_spair71k, "internet": make_internet}


def main(names=(), out: Path | None = None) -> None:
    """Writes <out>/<name>/dummy_data/ for each name (all when empty); out defaults to datasets/."""
    global OUT
    OUT = Path(out) if out is not None else HERE
    for name in names or MAKERS:
        MAKERS[name]()
        files = [p for p in (OUT / name / "dummy_data").rglob("*") if p.is_file()]
        print(f"{name}: {len(files)} files, {sum(p.stat().st_size for p in files) / 1024:.1f} KiB")


if __name__ == "__main__":
    main(sys.argv[1:])
