"""Pictures of matches and masks: warped source beside the target, mask overlays, keypoint transfer, contact sheets.

Figures are built on `matplotlib.figure.Figure` directly (rendered by the Agg canvas when saved), never through
pyplot: a library must not switch the user's global matplotlib backend or keep figures alive in pyplot's registry.
Image arrays are uint8 (H, W, 3); masks are sigmoid probabilities at the model's size (S, S) or at the image size,
shown as foreground where p > 0.5 (the evaluation rule). Points are (P, 2) xy 1-indexed pixels.
"""
from __future__ import annotations

import functools
import pathlib

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
from matplotlib.figure import Figure

from macosnet_jax import geometry
from macosnet_jax.evaluation.masks import upsample_mask

MASK_COLOR_A = (255, 64, 32)
MASK_COLOR_B = (32, 160, 255)


def to_uint8(image, name="image"):
    """(H, W, 3) uint8, or float in 0..255 -> uint8 (rounded, clipped)."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"{name} must be an RGB image of shape (H, W, 3); got {image.shape}")
    if image.dtype == np.uint8:
        return image
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


@functools.partial(jax.jit, static_argnames=("height", "width"))
def _warp(image_a, theta_aff, theta_tps, height, width):
    grid, valid = geometry.composed_grid(theta_aff, theta_tps, height, width)
    return geometry.grid_sample(image_a, grid) * valid[..., None]


def warp_source(image_a, theta_aff, theta_tps, size_b):
    """A warped into B's frame: uint8 (H_B, W_B, 3), B's pixel q shows A at Aff(TPS(q)).

    Uses the reference's composed grid (geometry.composed_grid); where it is invalid (outside A) the output is black.
    theta_tps None -> the affine warp only. size_b: (height, width) of the output.
    """
    image_a = jnp.asarray(to_uint8(image_a, "image_a"), jnp.float32)
    theta_tps = geometry.IDENTITY_TPS if theta_tps is None else theta_tps
    theta_aff = jnp.asarray(theta_aff, jnp.float32).reshape(6)
    out = _warp(image_a, theta_aff, jnp.asarray(theta_tps, jnp.float32).reshape(18), int(size_b[0]), int(size_b[1]))
    return to_uint8(np.asarray(out))


def foreground(mask, height, width):
    """Mask probabilities (S, S) (or already (height, width)) -> boolean foreground at (height, width), p > 0.5."""
    mask = np.asarray(mask, np.float32)
    if mask.ndim == 3 and mask.shape[-1] == 1:
        mask = mask[..., 0]
    if mask.shape != (height, width):
        mask = upsample_mask(mask, height, width)
    return mask > 0.5


def overlay_mask(image, mask, color=MASK_COLOR_A, opacity=0.5):
    """Image uint8 (H, W, 3) with the mask's foreground tinted: out = (1 - opacity) * image + opacity * color there.

    mask: probabilities (S, S) or (H, W); background pixels are unchanged.
    """
    image = to_uint8(image)
    fg = foreground(mask, *image.shape[:2])
    blended = (1.0 - opacity) * image + opacity * np.asarray(color, np.float64)
    return np.where(fg[..., None], np.round(blended), image).astype(np.uint8)


def _show(ax, image, title):
    ax.imshow(image)
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()


def match_figure(image_a, image_b, warped_a, mask_a=None, mask_b=None):
    """Panels: A, B, A warped into B's frame, and the warped A blended with B; plus both mask overlays if given."""
    blend = ((to_uint8(warped_a).astype(np.float32) + to_uint8(image_b)) / 2).astype(np.uint8)
    panels = [(to_uint8(image_a), "source A"), (to_uint8(image_b), "target B"),
              (to_uint8(warped_a), "A warped to B"), (blend, "blend (warped A, B)")]
    if mask_a is not None:
        panels.append((overlay_mask(image_a, mask_a, MASK_COLOR_A), "mask A"))
    if mask_b is not None:
        panels.append((overlay_mask(image_b, mask_b, MASK_COLOR_B), "mask B"))
    fig = Figure(figsize=(3 * len(panels), 3.2))
    for i, (image, title) in enumerate(panels):
        _show(fig.add_subplot(1, len(panels), i + 1), image, title)
    fig.tight_layout()
    return fig


def keypoint_figure(image_a, image_b, points_b, pred_points_a, true_points_a=None):
    """B with its keypoints (left) and A with the transferred points (right).

    Each point has its own colour on both sides. With true_points_a, A also shows the ground truth (hollow
    circles) and a line from each predicted point to its true position (the error the PCK measures).
    """
    points_b = np.asarray(points_b, np.float64).reshape(-1, 2)
    pred = np.asarray(pred_points_a, np.float64).reshape(-1, 2)
    if pred.shape != points_b.shape:
        raise ValueError(f"pred_points_a {pred.shape} must correspond to points_b {points_b.shape}")
    fig = Figure(figsize=(8, 4))
    ax_b, ax_a = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    _show(ax_b, to_uint8(image_b), "target B: keypoints")
    _show(ax_a, to_uint8(image_a), "source A: transferred" + (" vs truth" if true_points_a is not None else ""))
    cmap = matplotlib.colormaps["hsv"]
    colors = [cmap(i / max(1, len(pred))) for i in range(len(pred))]
    # Pixel coordinates are 1-indexed; imshow puts pixel centres at 0-indexed integers.
    ax_b.scatter(points_b[:, 0] - 1, points_b[:, 1] - 1, c=colors, s=18, edgecolors="k", linewidths=0.5)
    ax_a.scatter(pred[:, 0] - 1, pred[:, 1] - 1, c=colors, s=18, edgecolors="k", linewidths=0.5)
    if true_points_a is not None:
        true = np.asarray(true_points_a, np.float64).reshape(-1, 2)
        if true.shape != pred.shape:
            raise ValueError(f"true_points_a {true.shape} must correspond to pred_points_a {pred.shape}")
        ax_a.scatter(true[:, 0] - 1, true[:, 1] - 1, facecolors="none", edgecolors=colors, s=40, linewidths=1.2)
        for p, t, c in zip(pred, true, colors):
            ax_a.plot([p[0] - 1, t[0] - 1], [p[1] - 1, t[1] - 1], color=c, linewidth=1.0)
    height_a, width_a = np.asarray(image_a).shape[:2]
    ax_a.set_xlim(-0.5, width_a - 0.5)  # keep the image frame even when a point falls outside
    ax_a.set_ylim(height_a - 0.5, -0.5)
    fig.tight_layout()
    return fig


def contact_sheet(images, masks, titles=None, columns=5):
    """A grid of image thumbnails with their mask overlays (a collection's co-segmentation at a glance)."""
    if len(images) != len(masks):
        raise ValueError(f"contact_sheet needs one mask per image; got {len(images)} images, {len(masks)} masks")
    if not images:
        raise ValueError("contact_sheet needs at least one image")
    columns = max(1, min(columns, len(images)))
    rows = -(-len(images) // columns)
    fig = Figure(figsize=(2.4 * columns, 2.5 * rows))
    for i, (image, mask) in enumerate(zip(images, masks)):
        shown = to_uint8(image) if mask is None else overlay_mask(image, mask)
        _show(fig.add_subplot(rows, columns, i + 1), shown, titles[i] if titles else str(i))
    fig.tight_layout()
    return fig


def save_figure(fig, path, dpi=100):
    """Writes a figure (PNG by extension) and returns the path."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def save_image(image, path):
    """Writes a uint8 (H, W, 3) or (H, W) array as an image file (PNG by extension)."""
    from PIL import Image  # noqa: PLC0415

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(image, np.uint8)).save(path)
    return path
