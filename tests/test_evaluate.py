"""Tests of macosnet_jax.evaluate: PCK parity with the reference (pck.npz), closed-form cases, TSS flow, .flo, P/J.

The fixture stores points as (B, 2, P) (row 0 = x) padded with -1; our functions take (P, 2) valid points.
"""
import json
import math

import numpy as np
import pytest
from PIL import Image

from conftest import load_fixture
from macosnet_jax import evaluate, geometry


@pytest.fixture(scope="module")
def ref():
    return load_fixture("pck")


def _valid(points_2p, n):
    return np.asarray(points_2p)[:, :n].T  # (2, P) padded -> (n, 2)


def _size(size_row):
    return (float(size_row[0]), float(size_row[1]))  # [h, w, c] -> (h, w)


# --------------------------------------------------------------------------------------------------------------
# Parity with the reference PCK (weakalign pck_metric, scnet and pf procedures).


@pytest.mark.parametrize("transfer", ["aff", "aff_tps"])
def test_transfer_matches_reference_pf_frame(ref, transfer):
    for b, n in enumerate(ref["num_points"]):
        theta_tps = ref["theta_tps"][b] if transfer == "aff_tps" else None
        pred = evaluate.transfer_points(_valid(ref["target_points_raw"][b], n), ref["theta_aff"][b], theta_tps,
                                        _size(ref["source_im_size_raw"][b]), _size(ref["target_im_size_raw"][b]))
        expected = _valid(ref[f"pred_source_points_{transfer}_pf"][b], n)
        np.testing.assert_allclose(pred, expected, atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("transfer", ["aff", "aff_tps"])
def test_pck_img224_matches_reference(ref, transfer, fixtures_dir):
    per_pair = []
    for b, n in enumerate(ref["num_points"]):
        points_a = _valid(ref["source_points_raw"][b], n)
        points_b = _valid(ref["target_points_raw"][b], n)
        size_a, size_b = _size(ref["source_im_size_raw"][b]), _size(ref["target_im_size_raw"][b])
        np.testing.assert_allclose(evaluate.img224_points(points_a, *size_a),
                                   _valid(ref["source_points_scnet"][b], n), rtol=1e-5)
        # The transfer happens in the 224 frame (not a rescaling of the original-frame prediction).
        pred = evaluate.transfer_points(evaluate.img224_points(points_b, *size_b), ref["theta_aff"][b],
                                        ref["theta_tps"][b] if transfer == "aff_tps" else None,
                                        (224.0, 224.0), (224.0, 224.0))
        np.testing.assert_allclose(pred, _valid(ref[f"pred_source_points_{transfer}_scnet"][b], n), atol=1e-3)
        correct, total = evaluate.keypoint_pair_counts(
            points_a, points_b, ref["theta_aff"][b], ref["theta_tps"][b] if transfer == "aff_tps" else None,
            size_a, size_b, "img224", [0.1])
        assert total == n
        per_pair.append(correct[0] / total)
    np.testing.assert_array_equal(np.float32(per_pair), ref[f"pck_{transfer}_scnet_alpha0p10"])
    assert ref["L_pck_scnet"].tolist() == [224.0] * len(per_pair)
    meta = json.loads((fixtures_dir / "pck.json").read_text())
    assert np.mean(per_pair) == pytest.approx(meta[f"mean_pck_{transfer}_scnet_alpha0p10"], rel=1e-6)


@pytest.mark.parametrize("transfer", ["aff", "aff_tps"])
def test_pck_kp_extent_matches_reference(ref, transfer):
    alphas = (0.05, 0.1, 0.15)
    per_pair = []
    for b, n in enumerate(ref["num_points"]):
        points_a = _valid(ref["source_points_raw"][b], n)
        assert evaluate.kp_extent_length(points_a) == pytest.approx(float(ref["L_pck_pf"][b]), rel=1e-6)
        correct, total = evaluate.keypoint_pair_counts(
            points_a, _valid(ref["target_points_raw"][b], n), ref["theta_aff"][b],
            ref["theta_tps"][b] if transfer == "aff_tps" else None, _size(ref["source_im_size_raw"][b]),
            _size(ref["target_im_size_raw"][b]), "kp_extent", alphas)
        per_pair.append(correct / total)
    per_pair = np.array(per_pair)
    for i, tag in enumerate(["0p05", "0p10", "0p15"]):
        np.testing.assert_array_equal(np.float32(per_pair[:, i]), ref[f"pck_{transfer}_pf_alpha{tag}"])


def test_strip_padding_and_compat_extent(ref):
    b = 1  # 4 valid points, padded to 20
    n = int(ref["num_points"][b])
    padded = ref["source_points_raw"][b].T
    valid = evaluate.strip_padding(padded)
    np.testing.assert_array_equal(valid, padded[:n])
    honest = evaluate.kp_extent_length(valid)
    buggy = evaluate.kp_extent_length(valid, compat=True)
    # The bug: the extent over the padded array includes (-1, -1).
    expected_buggy = float(np.max(padded.max(axis=0) - padded.min(axis=0)))
    assert buggy == pytest.approx(expected_buggy)
    assert buggy > honest
    # No padding when all 20 slots are used: compat changes nothing.
    full = ref["source_points_raw"][0].T
    assert evaluate.kp_extent_length(full, compat=True) == evaluate.kp_extent_length(full)


# --------------------------------------------------------------------------------------------------------------
# Closed-form cases.


def test_pck_inclusive_threshold_and_known_shift():
    true = np.array([[10.0, 10.0], [20.0, 20.0], [30.0, 30.0], [40.0, 40.0]])
    shift = np.array([[3.0, 4.0], [0.0, 0.0], [6.0, 8.0], [0.0, 5.0]])  # distances 5, 0, 10, 5
    assert evaluate.pck(true, true, 0.1, 100.0) == 1.0
    assert evaluate.pck(true + shift, true, 0.05, 100.0) == 0.75  # 5 <= 5 counts (inclusive)
    assert evaluate.pck(true + shift, true, 0.0499, 100.0) == 0.25
    assert evaluate.pck(true + shift, true, 0.1, 100.0) == 1.0
    assert math.isnan(evaluate.pck(np.zeros((0, 2)), np.zeros((0, 2)), 0.1, 10.0))
    with pytest.raises(ValueError, match="same shape"):
        evaluate.pck(true[:2], true, 0.1, 1.0)


def test_reference_lengths():
    points = np.array([[5.0, 7.0], [25.0, 10.0], [12.0, 37.0]])
    assert evaluate.kp_extent_length(points) == 30.0
    assert evaluate.bbox_length([10, 20, 50, 45]) == 40.0
    np.testing.assert_allclose(evaluate.img224_points(points, 112.0, 448.0), points * [0.5, 2.0])
    with pytest.raises(ValueError, match="x1, y1, x2, y2"):
        evaluate.bbox_length([1, 2, 3])


def test_identity_transfer_is_exact_and_translation_shifts():
    size = (50.0, 80.0)
    points = np.array([[1.0, 1.0], [80.0, 50.0], [33.5, 20.25]])
    identity = evaluate.transfer_points(points, geometry.IDENTITY_AFFINE, geometry.IDENTITY_TPS, size, size)
    np.testing.assert_allclose(identity, points, atol=1e-4)
    # tx = 2/(W-1) normalised = one pixel to the right in A.
    theta = np.array([1, 0, 2 / 79, 0, 1, 0], np.float32)
    shifted = evaluate.transfer_points(points, theta, None, size, size)
    np.testing.assert_allclose(shifted, points + [1.0, 0.0], atol=1e-4)
    counts, n = evaluate.keypoint_pair_counts(points, points, theta, None, size, size, "bbox", [0.01, 0.02],
                                              bbox_a=[0, 0, 60, 40])  # L = 60: thresholds 0.6 and 1.2 px
    assert counts.tolist() == [0, 3] and n == 3


def _pair(rng, h=40, w=60, n=6):
    points = np.stack([rng.uniform(1, w, n), rng.uniform(1, h, n)], axis=1)
    image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    return image, points


def test_evaluate_keypoints_perfect_and_shifted_predictor():
    rng = np.random.default_rng(0)
    examples = []
    for k in range(4):
        image, points = _pair(rng)
        examples.append(dict(pair_id=f"p{k}", image_a=image, image_b=image, keypoints_a=points, keypoints_b=points,
                             category=b"cat" if k < 2 else b"dog", bbox_a=np.array([0, 0, 50, 30], np.float32)))
    perfect = lambda a, b: {"theta_aff": geometry.IDENTITY_AFFINE, "theta_tps": geometry.IDENTITY_TPS}
    tables = evaluate.evaluate_keypoints(examples, perfect, conventions=("img224", "kp_extent", "bbox"),
                                         compat_kp_extent=True)
    assert set(tables) == {"img224", "kp_extent", "bbox", "kp_extent_compat"}
    for table in tables.values():
        for row in table.rows.values():
            assert all(v == pytest.approx(1.0) for v in row.values())
        assert table.counts == {"cat": 2, "dog": 2, "all": 4}
    # Shift every prediction by 3 px in x (tx = 6/(W-1)); bbox L = 50: correct iff 3 <= alpha * 50.
    shifted = lambda a, b: {"theta_aff": np.array([1, 0, 6 / 59, 0, 1, 0], np.float32), "theta_tps": None}
    table = evaluate.evaluate_keypoints(examples, shifted, conventions=("bbox",), alphas=(0.059, 0.061))["bbox"]
    assert table.rows["all"]["PCK@0.059"] == 0.0
    assert table.rows["all"]["PCK@0.061"] == pytest.approx(1.0)
    text = table.to_text()
    assert "bbox" in text and "all" in text and "cat" in text
    assert "convention" in table.to_json() and json.dumps(table.to_json())
    assert "cat" in table.to_text(classes_as_columns=True).splitlines()[3]


def test_per_image_vs_per_keypoint_means():
    # Two pairs: 1 of 1 correct and 0 of 3 correct -> per-image 0.5, per-keypoint 0.25.
    image = np.zeros((30, 30, 3), np.uint8)
    good = dict(image_a=image, image_b=image, keypoints_a=np.array([[5.0, 5.0]]), keypoints_b=np.array([[5.0, 5.0]]))
    far = np.array([[1.0, 1.0], [1.0, 30.0], [30.0, 1.0]])
    bad = dict(image_a=image, image_b=image, keypoints_a=far, keypoints_b=far[::-1] * 0 + 15.0)
    predictor = lambda a, b: {"theta_aff": geometry.IDENTITY_AFFINE, "theta_tps": None}
    table = evaluate.evaluate_keypoints([good, bad], predictor, conventions=("img224",), alphas=(0.05,))["img224"]
    assert table.rows["all"]["PCK@0.05"] == pytest.approx(0.5)
    assert table.rows["all"]["PCK@0.05 per-kp"] == pytest.approx(0.25)


def test_bad_examples_give_clear_errors():
    image = np.zeros((8, 8, 3), np.uint8)
    predictor = lambda a, b: {"theta_aff": geometry.IDENTITY_AFFINE}
    with pytest.raises(KeyError, match="keypoints_a"):
        evaluate.evaluate_keypoints([dict(image_a=image, image_b=image)], predictor)
    with pytest.raises(ValueError, match="one to one"):
        evaluate.evaluate_keypoints([dict(image_a=image, image_b=image, keypoints_a=np.ones((2, 2)),
                                          keypoints_b=np.ones((3, 2)))], predictor)
    with pytest.raises(ValueError, match="unknown PCK convention"):
        evaluate.evaluate_keypoints([], predictor, conventions=("pck_magic",))


# --------------------------------------------------------------------------------------------------------------
# TSS flow and .flo files.


def test_flo_round_trip_bit_exact(tmp_path):
    rng = np.random.default_rng(1)
    flow = rng.normal(size=(7, 11, 2)).astype(np.float32)
    flow[0, 0] = [1e10, 1e10]
    flow[1, 2] = [-0.0, np.float32(1e-40)]  # signed zero and a denormal survive
    path = tmp_path / "x.flo"
    evaluate.write_flo(path, flow)
    data = path.read_bytes()
    assert len(data) == 12 + 7 * 11 * 8
    assert np.frombuffer(data[:4], "<f4")[0] == np.float32(202021.25)
    assert np.frombuffer(data[4:12], "<i4").tolist() == [11, 7]  # width, then height
    back = evaluate.read_flo(path)
    assert back.dtype == np.float32 and back.shape == (7, 11, 2)
    assert back.tobytes() == flow.tobytes()
    evaluate.write_flo(tmp_path / "y.flo", back)
    assert (tmp_path / "y.flo").read_bytes() == data


def test_flo_bad_magic_and_truncated(tmp_path):
    bad = tmp_path / "bad.flo"
    bad.write_bytes(np.array([1.0], "<f4").tobytes() + np.array([2, 2], "<i4").tobytes() + bytes(32))
    with pytest.raises(ValueError, match="bad.flo.*magic"):
        evaluate.read_flo(bad)
    short = tmp_path / "short.flo"
    evaluate.write_flo(short, np.zeros((3, 3, 2), np.float32))
    short.write_bytes(short.read_bytes()[:-4])
    with pytest.raises(ValueError, match="short.flo"):
        evaluate.read_flo(short)


def test_dense_flow_identity_translation_and_out_of_image():
    size_a, size_b = (20, 30), (10, 16)
    flow_tps = evaluate.dense_flow(geometry.IDENTITY_AFFINE, geometry.IDENTITY_TPS, size_b, size_b)
    assert flow_tps.shape == (10, 16, 2) and flow_tps.dtype == np.float32
    np.testing.assert_allclose(flow_tps[1:-1, 1:-1], 0.0, atol=1e-4)
    # The exact affine identity maps border pixels ONTO the border, not strictly inside -> 1e10 there (as the
    # reference). The identity TPS is identity only to ~1e-6, so its border pixels land a few ulps on either side
    # of the border; the tolerance of the inside test makes them invalid too, on every CPU.
    flow = evaluate.dense_flow(geometry.IDENTITY_AFFINE, None, size_b, size_b)
    border = np.zeros((10, 16), bool)
    border[[0, -1]], border[:, [0, -1]] = True, True
    for f in (flow, flow_tps):
        np.testing.assert_array_equal(np.all(f == 1e10, axis=-1), border)
    np.testing.assert_allclose(flow[1:-1, 1:-1], 0.0, atol=1e-5)
    # Different sizes, affine: source pixel = normalized_to_pixels(target normalised) in A.
    theta = np.array([0.5, 0, 0.1, 0, 0.5, -0.2], np.float32)
    flow = evaluate.dense_flow(theta, None, size_a, size_b)
    ys, xs = np.meshgrid(np.arange(1, 11), np.arange(1, 17), indexing="ij")
    xn, yn = (xs - 1) / 15 * 2 - 1, (ys - 1) / 9 * 2 - 1
    sx = (0.5 * xn + 0.1 + 1) / 2 * 29 + 1
    sy = (0.5 * yn - 0.2 + 1) / 2 * 19 + 1
    np.testing.assert_allclose(flow[..., 0], sx - xs, atol=1e-4)
    np.testing.assert_allclose(flow[..., 1], sy - ys, atol=1e-4)
    # A map sending everything outside A gives 1e10, never NaN.
    far = evaluate.dense_flow(np.array([1, 0, 5, 0, 1, 0], np.float32), None, size_a, size_b)
    assert np.all(far == 1e10) and not np.isnan(far).any()
    # Flipping back negates the normalised source x.
    flipped = evaluate.dense_flow(theta, None, size_a, size_b, flip_a=True)
    np.testing.assert_allclose(flipped[..., 0] + xs, (-(0.5 * xn + 0.1) + 1) / 2 * 29 + 1, atol=1e-4)


def test_dense_flow_border_decision_is_tolerant():
    """A prediction within float32 round-off of A's border is outside (1e10) on both sides of it: 'inside A' is
    decided with geometry.GRID_TOLERANCE, so the last bit of the map (which differs between CPUs) cannot flip it."""
    size_a, size_b = (20, 30), (4, 5)
    ys, xs = np.meshgrid(np.arange(1, 5), np.arange(1, 6), indexing="ij")

    def flow_to(x, y, flip_a=False):  # every pixel of B mapped to the same normalised point (x, y) of A
        return evaluate.dense_flow(np.array([0, 0, x, 0, 0, y], np.float32), None, size_a, size_b, flip_a=flip_a)

    for edge in (-1.0, 1.0):
        for offset in (-1e-6, -1e-7, 0.0, 1e-7, 1e-6):  # float32(-1 + 1e-7) = -0.99999988 is inside (-1, 1)
            assert np.all(flow_to(edge + offset, 0.0) == evaluate.FLOW_INVALID), (edge, offset)
            assert np.all(flow_to(0.0, edge + offset) == evaluate.FLOW_INVALID), (edge, offset)
            assert np.all(flow_to(-(edge + offset), 0.5, flip_a=True) == evaluate.FLOW_INVALID), (edge, offset)
    # Clearly inside (1e-4 from the border, 50x the tolerance): the flow to the corner-aligned source pixel.
    near = 1.0 - 1e-4
    flow = flow_to(near, -near)
    np.testing.assert_allclose(flow[..., 0], (near + 1) / 2 * 29 + 1 - xs, atol=1e-3)
    np.testing.assert_allclose(flow[..., 1], (-near + 1) / 2 * 19 + 1 - ys, atol=1e-3)


def test_flow_pck_known_error():
    gt = np.zeros((10, 20, 2), np.float32)
    pred = gt.copy()
    pred[:, :10, 0] = 2.0  # error 2 px on the left half
    pred[:, 10:, 1] = 3.0  # error 3 px on the right half
    mask = np.zeros((10, 20), np.uint8)
    mask[:, 5:15] = 255  # 5 columns with error 2 and 5 with error 3
    # size_a (30, 40): threshold 0.05 * 40 = 2.0 -> the error-2 half is correct (inclusive).
    assert evaluate.flow_pck(pred, gt, mask, (30, 40)) == pytest.approx(0.5)
    assert evaluate.flow_pck(pred, gt, mask, (30, 60)) == pytest.approx(1.0)  # threshold 3
    assert evaluate.flow_pck(pred, gt, mask, (30, 39)) == pytest.approx(0.0)
    gt_unknown = gt.copy()
    gt_unknown[:, :10] = 1e10  # unknown ground truth is excluded
    assert evaluate.flow_pck(pred, gt_unknown, mask, (30, 40)) == pytest.approx(0.0)
    assert math.isnan(evaluate.flow_pck(pred, gt, np.zeros((10, 20)), (30, 40)))


def _translation_example(rng, subset, flip, shift_px=2.0):
    """A TSS-like pair: B = A shifted; GT flow constant (shift_px, 0) in the un-mirrored frame."""
    h, w = 24, 32
    image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    flow = np.zeros((h, w, 2), np.float32)
    flow[..., 0] = shift_px
    mask = np.zeros((h, w), np.uint8)
    mask[6:18, 4:20] = 255  # asymmetric, so mirroring matters
    return dict(pair_id=f"{subset}/{flip}", image_a=image, image_b=image, flow=flow, mask_a=mask, mask_b=mask,
                subset=subset, flip=flip)


def test_evaluate_tss_flip_back_vs_compat(tmp_path):
    rng = np.random.default_rng(2)
    examples = [_translation_example(rng, s, f) for s in ("FG3DCar", "JODS", "PASCAL") for f in (0, 1)]
    tx = 2.0 * 2 / 31  # the true 2-pixel shift in normalised units
    seen = []

    def predictor(a, b):
        seen.append(a.copy())
        mask = evaluate.upsample_mask(examples[0]["mask_a"] / 255.0, 16, 16)
        # The predictor sees A mirrored on flipped pairs: it predicts the mirrored map x -> -(x + tx).
        flipped = not np.array_equal(a, examples[len(seen) - 1]["image_a"])
        theta = np.array([-1, 0, -tx, 0, 1, 0] if flipped else [1, 0, tx, 0, 1, 0], np.float32)
        return {"theta_aff": theta, "theta_tps": geometry.IDENTITY_TPS, "mask_a": mask[:, ::-1] if flipped else mask,
                "mask_b": mask}

    tables = evaluate.evaluate_tss(examples, predictor, flo_dir=tmp_path / "flo", mask_dir=tmp_path / "masks")
    np.testing.assert_array_equal(seen[1], examples[1]["image_a"][:, ::-1])  # mirrored input on flip pairs
    flow_table = tables["flow_pck"]
    assert list(flow_table.rows) == ["FG3DCar", "JODS", "PASCAL", "mean"]
    for subset in ("FG3DCar", "JODS", "PASCAL"):
        assert flow_table.rows[subset]["flip_back"] == pytest.approx(1.0)
        # Without flip back, the flipped direction predicts source x' = 31 - x instead of x + 2 (1-indexed, W = 32):
        # error |29 - 2x| <= 0.05 * 32 only for x in {14, 15}, 2 of the 16 mask columns (5..20) -> (1 + 2/16) / 2.
        assert flow_table.rows[subset]["compat"] == pytest.approx(0.5625)
    assert flow_table.rows["mean"]["flip_back"] == pytest.approx(1.0)
    flo = evaluate.read_flo(tmp_path / "flo" / "PASCAL_1.flo")
    np.testing.assert_allclose(flo[6:18, 8:24, 0], 2.0, atol=1e-3)
    coseg = tables["coseg"]
    assert coseg.rows["mean"]["flip_back P"] > 0.95 and coseg.rows["mean"]["flip_back J"] > 0.9
    assert coseg.rows["PASCAL"]["compat J"] < coseg.rows["PASCAL"]["flip_back J"] - 0.1  # mirrored A mask kept
    saved = np.asarray(Image.open(tmp_path / "masks" / "JODS_0_a.png"))
    assert saved.shape == (24, 32) and set(np.unique(saved)) <= {0, 255}


# --------------------------------------------------------------------------------------------------------------
# Co-segmentation.


def test_precision_jaccard_closed_form():
    gt = np.zeros((10, 10), bool)
    gt[:5] = True
    assert evaluate.precision_jaccard(gt, gt) == (1.0, 1.0)
    pred = np.zeros((10, 10), bool)
    pred[:, :5] = True  # overlap 25, union 75, correct pixels 50
    p, j = evaluate.precision_jaccard(pred, gt)
    assert p == pytest.approx(0.5) and j == pytest.approx(25 / 75)
    p, j = evaluate.precision_jaccard(pred, np.zeros((10, 10), np.uint8))
    assert p == pytest.approx(0.5) and math.isnan(j)
    assert evaluate.as_binary_mask(np.array([[0, 255], [127, 128]], np.uint8)).tolist() == [[False, True],
                                                                                              [False, True]]


def test_upsample_then_threshold():
    prob = np.array([[0.0, 1.0], [0.0, 1.0]], np.float32)
    up = evaluate.upsample_mask(prob, 3, 5)
    np.testing.assert_allclose(up[0], [0, 0.25, 0.5, 0.75, 1.0], atol=1e-6)
    # The bucketed sampling equals geometry.resize_bilinear (the shared corner-aligned resize).
    rand = np.random.default_rng(5).random((6, 7)).astype(np.float32)
    np.testing.assert_allclose(evaluate.upsample_mask(rand, 9, 13),
                               np.asarray(geometry.resize_bilinear(rand[..., None], 9, 13))[..., 0], atol=1e-6)
    assert evaluate.predicted_foreground(prob, 3, 5)[0].tolist() == [False, False, False, True, True]


def _shape_image(rng, h, w, box):
    image = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), np.uint8)
    y0, y1, x0, x1 = box
    mask[y0:y1, x0:x1] = 255
    image[mask > 0] = 200
    return image, mask


def test_evaluate_cosegmentation_oracle_and_aggregation(tmp_path):
    rng = np.random.default_rng(3)
    examples = []
    for k in range(5):
        image, mask = _shape_image(rng, 20 + k, 30, (4, 12, 5 + k, 20))
        examples.append(dict(image=image, mask=mask, has_mask=k != 4, category="plane", subset="100"))
    image, mask = _shape_image(rng, 16, 16, (2, 10, 2, 10))
    examples.append(dict(image=image, mask=mask, has_mask=True, category="car", subset="100"))
    examples.append(dict(image=image, mask=mask, has_mask=True, category="car", subset="full"))
    calls = []

    def oracle(a, b):
        # A perfect segmenter at the model size: bright pixels are the object.
        calls.append(1)
        prob = lambda im: evaluate.upsample_mask(np.float32(im.mean(-1) > 128), 64, 64)
        return {"theta_aff": geometry.IDENTITY_AFFINE, "mask_a": prob(a), "mask_b": prob(b)}

    tables = evaluate.evaluate_cosegmentation(examples, oracle, partners=1, subset="100", mask_dir=tmp_path)
    table = tables["coseg"]
    assert table.counts == {"car": 1, "plane": 4, "mean": 5}
    assert table.rows["plane"]["P"] > 0.97 and table.rows["plane"]["J"] > 0.9
    assert table.rows["car"]["P"] > 0.97
    assert (tmp_path / "plane" / "0000.png").exists() and not (tmp_path / "plane" / "0004.png").exists()
    assert len(calls) == 5 + 1  # 5 cyclic pairs for 5 planes, a self pair for the lone car


def test_collection_masks_mean_over_partners():
    images = [np.full((4, 4, 3), v, np.uint8) for v in (0, 1, 2, 3, 4)]
    # Mask value of image a in pair (a, b) = b's value: the aggregated mask is the mean of its partners' values.
    predictor = lambda a, b: {"mask_a": np.full((2, 2), b[0, 0, 0], np.float32),
                              "mask_b": np.full((2, 2), a[0, 0, 0], np.float32)}
    masks = evaluate.collection_masks(images, predictor, partners=1)
    assert [float(m[0, 0]) for m in masks] == [(1 + 4) / 2, (0 + 2) / 2, (1 + 3) / 2, (2 + 4) / 2, (3 + 0) / 2]
    masks = evaluate.collection_masks(images, predictor, partners=10)  # every other image
    assert float(masks[0][0, 0]) == pytest.approx((1 + 2 + 3 + 4) / 4)


def test_evaluate_synthetic_tables():
    rng = np.random.default_rng(4)
    image, mask = _shape_image(rng, 32, 32, (8, 24, 8, 24))
    points = np.array([[10.0, 10.0], [20.0, 15.0], [15.0, 22.0]])
    example = dict(image_a=image, image_b=image, keypoints_a=points, keypoints_b=points, mask_a=mask, mask_b=mask,
                   category=np.int64(1))
    prob = np.float32(mask > 0)
    predictor = lambda a, b: {"theta_aff": geometry.IDENTITY_AFFINE, "theta_tps": geometry.IDENTITY_TPS,
                              "mask_a": prob, "mask_b": prob}
    other = dict(example, category=np.int64(0))
    tables = evaluate.evaluate_synthetic([example, example, other], predictor, category_names=["fish", "bird"])
    assert list(tables["img224"].rows) == ["fish", "bird", "all"]  # the dataset's class order, not alphabetical
    assert set(tables) == {"kp_extent", "img224", "coseg"}
    assert tables["kp_extent"].rows["bird"]["PCK@0.05"] == pytest.approx(1.0)
    assert tables["coseg"].rows["bird"] == {"P": 1.0, "J": 1.0}
    assert tables["coseg"].counts["bird"] == 4


def test_write_tables(tmp_path):
    table = evaluate.ResultTable("t", "img224", ["P"], {"a": {"P": 0.5}, "mean": {"P": math.nan}},
                                 {"a": 1, "mean": 1}, ["mean"])
    text_path, json_path = evaluate.write_tables({"x": table}, tmp_path)
    assert "img224" in text_path.read_text()
    assert json.loads(json_path.read_text())["x"]["rows"]["mean"]["P"] is None


def test_evaluate_tss_on_the_tss_builder_examples():
    """The driver consumes the TSS builder's example dicts (feature names, uint8 0/1 masks, ids with '/')."""
    import io
    import pathlib

    from macosnet_datasets.tss import tss_dataset_builder as builder

    tss = pathlib.Path(builder.__file__).parent / "dummy_data" / "TSS_CVPR2016"
    assert tss.is_dir(), f"committed TSS dummy data missing at {tss} (datasets/make_dummy_data.py writes it)"
    csv_path = tss / "data.csv" if (tss / "data.csv").exists() else None
    examples = []
    for _, example in builder.generate_pairs(tss, csv_path):
        for key in ("image_a", "image_b"):  # the generator yields encoded images (tfds decodes them)
            value = example[key]
            if not isinstance(value, np.ndarray):
                value = Image.open(io.BytesIO(value) if isinstance(value, bytes) else value)
                example[key] = np.asarray(value.convert("RGB"))
        examples.append(example)

    identity = lambda a, b: {"theta_aff": geometry.IDENTITY_AFFINE, "theta_tps": None, "mask_a": None,
                             "mask_b": None}
    tables = evaluate.evaluate_tss(examples, identity)
    assert "coseg" not in tables  # no masks predicted
    table = tables["flow_pck"]
    assert set(table.rows) == {e["subset"] for e in examples} | {"mean"}
    assert sum(table.counts[s] for s in table.rows if s != "mean") == len(examples)
    # Independent check of one direction: identity affine flow vs ground truth, by hand.
    e = next(e for e in examples if not e["flip"])
    (h_a, w_a), (h_b, w_b) = e["image_a"].shape[:2], e["image_b"].shape[:2]
    ys, xs = np.meshgrid(np.arange(1, h_b + 1), np.arange(1, w_b + 1), indexing="ij")
    sx, sy = (xs - 1) / (w_b - 1) * (w_a - 1) + 1, (ys - 1) / (h_b - 1) * (h_a - 1) + 1
    inside = (xs > 1) & (xs < w_b) & (ys > 1) & (ys < h_b)
    pred = np.where(inside[..., None], np.stack([sx - xs, sy - ys], -1), 1e10)
    fg = (e["mask_b"] > 0) & np.all(np.abs(e["flow"]) < 1e9, -1)
    expected = np.mean(np.linalg.norm(pred - e["flow"], axis=-1)[fg] <= 0.05 * max(h_a, w_a))
    got = evaluate.flow_pck(evaluate.dense_flow(geometry.IDENTITY_AFFINE, None, (h_a, w_a), (h_b, w_b)), e["flow"],
                            e["mask_b"], (h_a, w_a))
    assert got == pytest.approx(expected)
