"""Tests of macosnet_jax.visualize: warps and overlays against closed forms; figures hold what they promise."""
import numpy as np
import pytest
from PIL import Image

from macosnet_jax import geometry, visualize


def _image(h=20, w=28, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_warp_source_identity_and_shift():
    image = _image()
    same = visualize.warp_source(image, geometry.IDENTITY_AFFINE, None, image.shape[:2])
    # The exact identity lands on pixel centres; the composed grid marks the border (not strictly inside) invalid.
    np.testing.assert_array_equal(same[1:-1, 1:-1], image[1:-1, 1:-1])
    assert np.all(same[0] == 0) and np.all(same[:, -1] == 0)
    # tx = 2 px: output pixel q reads A at q + 2 (sampling map B -> A).
    theta = np.array([1, 0, 2 * 2 / 27, 0, 1, 0], np.float32)
    shifted = visualize.warp_source(image, theta, None, image.shape[:2])
    np.testing.assert_allclose(shifted[1:-1, 1:-3].astype(int), image[1:-1, 3:-1].astype(int), atol=1)
    # Output size follows B, whatever A's size; the TPS identity changes nothing visible.
    other = visualize.warp_source(image, geometry.IDENTITY_AFFINE, geometry.IDENTITY_TPS, (10, 14))
    assert other.shape == (10, 14, 3) and other.dtype == np.uint8


def test_overlay_mask_closed_form():
    image = np.full((4, 6, 3), 100, np.uint8)
    mask = np.zeros((4, 6), np.float32)
    mask[1:3, 2:5] = 0.9
    out = visualize.overlay_mask(image, mask, color=(200, 0, 50), opacity=0.5)
    np.testing.assert_array_equal(out[1, 2], [150, 50, 75])
    np.testing.assert_array_equal(out[0, 0], [100, 100, 100])
    assert int((out != 100).any(-1).sum()) == 6
    # A model-size mask is upsampled to the image first (fg = p > 0.5 after upsampling).
    small = np.array([[0.0, 1.0], [0.0, 1.0]], np.float32)
    out = visualize.overlay_mask(np.zeros((3, 5, 3), np.uint8), small, color=(255, 255, 255), opacity=1.0)
    assert (out[..., 0] == 255).tolist()[0] == [False, False, False, True, True]


def test_match_figure_panels(tmp_path):
    a, b = _image(seed=1), _image(16, 24, seed=2)
    warped = visualize.warp_source(a, geometry.IDENTITY_AFFINE, None, b.shape[:2])
    fig = visualize.match_figure(a, b, warped, mask_a=np.ones((8, 8)), mask_b=np.zeros((8, 8)))
    assert len(fig.axes) == 6
    assert [ax.get_title() for ax in fig.axes][-2:] == ["mask A", "mask B"]
    assert len(visualize.match_figure(a, b, warped).axes) == 4
    path = visualize.save_figure(fig, tmp_path / "match.png")
    assert Image.open(path).size[0] > 100


def test_keypoint_figure_draws_error_lines(tmp_path):
    a, b = _image(seed=3), _image(seed=4)
    points_b = np.array([[3.0, 4.0], [10.0, 12.0], [20.0, 5.0]])
    pred = points_b + 1.0
    fig = visualize.keypoint_figure(a, b, points_b, pred, true_points_a=points_b)
    ax_b, ax_a = fig.axes
    assert len(ax_a.lines) == 3 and len(ax_b.lines) == 0
    # Lines join predicted and true points (drawn in 0-indexed image coordinates).
    np.testing.assert_allclose(ax_a.lines[1].get_xydata(), [pred[1] - 1, points_b[1] - 1])
    assert len(visualize.keypoint_figure(a, b, points_b, pred).axes[1].lines) == 0
    visualize.save_figure(fig, tmp_path / "kp.png")
    with pytest.raises(ValueError, match="correspond"):
        visualize.keypoint_figure(a, b, points_b, pred[:2])


def test_contact_sheet(tmp_path):
    images = [_image(seed=s) for s in range(7)]
    masks = [np.eye(8, dtype=np.float32)] * 6 + [None]
    fig = visualize.contact_sheet(images, masks, titles=[f"im{i}" for i in range(7)], columns=3)
    assert len(fig.axes) == 7 and fig.axes[6].get_title() == "im6"
    visualize.save_figure(fig, tmp_path / "sheet.png")
    with pytest.raises(ValueError, match="one mask per image"):
        visualize.contact_sheet(images, masks[:2])
