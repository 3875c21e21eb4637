"""Coordinates, affine and thin-plate-spline maps, sampling grids and corner-aligned bilinear sampling.

Every function works on ONE example (vmap for batches) and follows SPEC §1 and §4, the conventions of the PyTorch
ancestors (weakalign, CNNGeo) whose checkpoints we load:

- Normalised coordinates are corner-aligned: -1 is the centre of the first pixel, +1 the centre of the last
  (PyTorch `align_corners=True`; the reference predates the default change, and a half-pixel shift here would
  silently cost accuracy on every imported checkpoint).
- Pixel coordinates of keypoints are 1-indexed (the PF annotations): pixel 1 -> -1, pixel L -> +1.
- A transformation is a *sampling map* from the target (B) frame to the source (A) frame: warping A with it gives an
  image aligned with B (backward warping).
- Points are (P, 2) with [..., 0] = x (along the width), [..., 1] = y; grids are (H, W, 2) in the same order; images
  are (H, W, C).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

IDENTITY_AFFINE = np.array([1.0, 0.0, 0.0, 0.0, 1.0, 0.0], dtype=np.float32)
# TPS control points on the target side, 3x3, x-major (the reference's order: x is the slow index).
TPS_CONTROL_X = np.repeat(np.linspace(-1.0, 1.0, 3), 3).astype(np.float32)
TPS_CONTROL_Y = np.tile(np.linspace(-1.0, 1.0, 3), 3).astype(np.float32)
IDENTITY_TPS = np.concatenate([TPS_CONTROL_X, TPS_CONTROL_Y])
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

# Sampling coordinates far outside an image (such as the -1e10 markers of the composed grid) are clipped to this
# many pixels beyond the border before flooring, so that index arithmetic never overflows int32.
_OUTSIDE_MARGIN = 2.0


def _check_points(points, name="points"):
    if points.ndim != 2 or points.shape[-1] != 2:
        raise ValueError(f"{name} must have shape (P, 2) with [..., 0] = x; got {points.shape}")


def _check_theta(theta, size, kind):
    if theta.shape != (size,):
        raise ValueError(f"{kind} theta must have shape ({size},) for one example (vmap for batches); got {theta.shape}")


# --------------------------------------------------------------------------------------------------------------
# Pixel <-> normalised coordinates.


def pixels_to_normalized(points, height, width):
    """1-indexed pixel coordinates (P, 2) xy of an image of size (height, width) -> normalised [-1, 1]."""
    points = jnp.asarray(points, jnp.float32)
    _check_points(points)
    size = jnp.asarray([width, height], jnp.float32)
    return (points - 1.0 - (size - 1.0) / 2.0) * 2.0 / (size - 1.0)


def normalized_to_pixels(points, height, width):
    """Normalised coordinates (P, 2) xy -> 1-indexed pixel coordinates of an image of size (height, width)."""
    points = jnp.asarray(points, jnp.float32)
    _check_points(points)
    size = jnp.asarray([width, height], jnp.float32)
    return points * (size - 1.0) / 2.0 + 1.0 + (size - 1.0) / 2.0


def base_grid(height, width):
    """The identity sampling grid (height, width, 2): grid[i, j] = (x_j, y_i), corner-aligned."""
    x = np.linspace(-1.0, 1.0, width, dtype=np.float64)
    y = np.linspace(-1.0, 1.0, height, dtype=np.float64)
    xx, yy = np.meshgrid(x, y)  # (H, W) each
    return jnp.asarray(np.stack([xx, yy], axis=-1), jnp.float32)


def _grid_from_points(fn, height, width):
    grid = base_grid(height, width).reshape(-1, 2)
    return fn(grid).reshape(height, width, 2)


# --------------------------------------------------------------------------------------------------------------
# Affine maps.


def _matmul(a, b):
    """a @ b in true float32. Coordinates must not go through TF32 (GPUs' default for float32 matmuls in XLA): its
    10-bit mantissa moved grid points by ~5e-4 (0.07 px at 240 px) and flipped PCK decisions on an H200."""
    return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)


def affine_points(theta, points, offset_factor=1.0):
    """Applies the affine map of theta (6,) = [a11 a12 tx a21 a22 ty] to points (P, 2).

    offset_factor o scales only the translation (A p + o t): the reference's inlier loss uses o = 227/210.
    """
    theta = jnp.asarray(theta, jnp.float32)
    _check_theta(theta, 6, "affine")
    points = jnp.asarray(points, jnp.float32)
    _check_points(points)
    matrix = theta.reshape(2, 3)
    return _matmul(points, matrix[:, :2].T) + offset_factor * matrix[:, 2]


def affine_grid(theta, height, width, offset_factor=1.0):
    """Sampling grid (height, width, 2) of the affine map theta (6,) on the corner-aligned base grid."""
    return _grid_from_points(lambda p: affine_points(theta, p, offset_factor), height, width)


# --------------------------------------------------------------------------------------------------------------
# Thin-plate splines (3x3 control grid).


def _tps_kernel(squared_distance):
    """U(d) = d log d on squared distances, U(0) = 0, with a gradient that stays finite at 0."""
    positive = squared_distance > 0
    safe = jnp.where(positive, squared_distance, 1.0)
    return jnp.where(positive, squared_distance * jnp.log(safe), 0.0)


@functools.lru_cache(maxsize=None)
def tps_inverse_matrix(reg=0.0):
    """L^-1 (12, 12) of the 3x3 TPS with regularisation reg on K's diagonal (a constant: computed once)."""
    px = TPS_CONTROL_X.astype(np.float64)
    py = TPS_CONTROL_Y.astype(np.float64)
    d = (px[:, None] - px[None, :]) ** 2 + (py[:, None] - py[None, :]) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        k = np.where(d > 0, d * np.log(np.where(d > 0, d, 1.0)), 0.0)
    k = k + reg * np.eye(9)
    p = np.stack([np.ones(9), px, py], axis=1)
    top = np.concatenate([k, p], axis=1)
    bottom = np.concatenate([p.T, np.zeros((3, 3))], axis=1)
    matrix = np.concatenate([top, bottom], axis=0)
    return np.linalg.inv(matrix).astype(np.float32)


def tps_points(theta, points, reg=0.0, offset_factor=1.0):
    """Applies the TPS of theta (18,) = [Q_X(9), Q_Y(9)] (absolute source positions of the control points).

    points: (P, 2). reg: λ on K's diagonal (0 in the model, 0.2 inside the matching loss). offset_factor o gives the
    reference's loss-time variant o·T(p / o).
    """
    theta = jnp.asarray(theta, jnp.float32)
    _check_theta(theta, 18, "TPS")
    points = jnp.asarray(points, jnp.float32)
    _check_points(points)
    points = points / offset_factor
    inverse = jnp.asarray(tps_inverse_matrix(float(reg)))
    targets = theta.reshape(2, 9).T  # (9, 2): column 0 = Q_X, column 1 = Q_Y
    weights = _matmul(inverse[:9, :9], targets)  # (9, 2): W_X, W_Y
    affine = _matmul(inverse[9:, :9], targets)  # (3, 2): a_X, a_Y
    control = jnp.asarray(np.stack([TPS_CONTROL_X, TPS_CONTROL_Y], axis=1))  # (9, 2)
    squared = jnp.sum((points[:, None, :] - control[None, :, :]) ** 2, axis=-1)  # (P, 9)
    mapped = affine[0] + _matmul(points, affine[1:]) + _matmul(_tps_kernel(squared), weights)
    return offset_factor * mapped


def tps_grid(theta, height, width, reg=0.0, offset_factor=1.0):
    """Sampling grid (height, width, 2) of the TPS theta (18,) on the corner-aligned base grid."""
    return _grid_from_points(lambda p: tps_points(theta, p, reg, offset_factor), height, width)


# --------------------------------------------------------------------------------------------------------------
# Composition: the two-stage model's final map p -> Aff(TPS(p)).


def composed_points(theta_aff, theta_tps, points, reg=0.0):
    """The cascade's final map on points (P, 2): TPS first (B -> A'), then the affine (A' -> A)."""
    return affine_points(theta_aff, tps_points(theta_tps, points, reg))


# Validity decisions on float32 grids use this tolerance, in normalised coordinates (1 unit = half the image), so
# that they do not depend on the last bit of a grid value: FMA and vector code give TPS grids that differ by a few
# ulps between CPUs (an ulp near 1.0 is 6e-8 to 1.2e-7). It is ~20x that round-off and 4x below the closest decision
# quantity of the reference fixtures (|G_tps| never within 8.9e-6 of 1), so the reference's validity pattern is kept.
GRID_TOLERANCE = 2e-6


def inside(grid):
    """(..., 2) normalised points or grid -> (...) bool: strictly inside (-1, 1)² by more than GRID_TOLERANCE in
    both coordinates. Every "inside the image" decision on float32 coordinates uses it (composed grids, flows)."""
    return jnp.all(jnp.abs(grid) < 1.0 - GRID_TOLERANCE, axis=-1)


def _nodes_read(index, tolerance):
    """Grid-index coordinates (...) -> (low, high) int32 node indices read with a bilinear weight above tolerance.

    Within `tolerance` (index units) of a node, only that node counts as read (low == high); elsewhere both
    neighbours do.
    """
    return jnp.floor(index + tolerance).astype(jnp.int32), jnp.ceil(index - tolerance).astype(jnp.int32)


def _reads_only_valid_nodes(node_valid, grid):
    """Whether bilinear sampling of a (H, W) node map at grid (h, w, 2) reads only valid nodes -> (h, w) bool.

    A node counts as read when its weight is above the round-off of GRID_TOLERANCE along each axis, so a sample
    that lands on a node up to float32 noise reads that node alone. Samples must lie inside the node map.
    """
    height, width = node_valid.shape
    ix = (grid[..., 0] + 1.0) / 2.0 * (width - 1)
    iy = (grid[..., 1] + 1.0) / 2.0 * (height - 1)
    x_lo, x_hi = _nodes_read(ix, GRID_TOLERANCE * (width - 1) / 2.0)
    y_lo, y_hi = _nodes_read(iy, GRID_TOLERANCE * (height - 1) / 2.0)
    ok = jnp.ones(grid.shape[:2], bool)
    for xs in (x_lo, x_hi):
        for ys in (y_lo, y_hi):
            ok = ok & node_valid[jnp.clip(ys, 0, height - 1), jnp.clip(xs, 0, width - 1)]
    return ok


INVALID_COORDINATE = -1e10


def composed_grid(theta_aff, theta_tps, height, width, reg=0.0, offset_factor=1.0):
    """The reference's composed sampling grid Aff(TPS(·)) at (height, width), with its validity mask.

    As weakalign's ComposedGeometricTnf: the affine grid G_aff, with cells not strictly inside (-1, 1)² marked
    invalid, is sampled bilinearly at the TPS grid G_tps; a cell is valid iff G_tps is strictly inside (-1, 1)² and
    every affine node it reads with non-zero weight is valid. Where valid, the value equals Aff(TPS(p)) (bilinear
    interpolation of an affine map is exact). Invalid cells hold INVALID_COORDINATE so that sampling there reads
    zero, as in the reference.

    "Strictly inside" and "non-zero weight" are decided with GRID_TOLERANCE, so the mask is the same on every CPU:
    for the exact identity every interior cell is valid (the reference, deciding on the last bit, drops a few of
    them depending on round-off; see tests/fixtures/reference/README.md).

    Returns (grid (height, width, 2), valid (height, width) bool).
    """
    grid_aff = affine_grid(theta_aff, height, width, offset_factor)
    grid_tps = tps_grid(theta_tps, height, width, reg, offset_factor)
    sampled = grid_sample(grid_aff, grid_tps)
    valid = inside(grid_tps) & _reads_only_valid_nodes(inside(grid_aff), grid_tps)
    grid = jnp.where(valid[..., None], sampled, INVALID_COORDINATE)
    return grid, valid


# --------------------------------------------------------------------------------------------------------------
# Bilinear sampling and warps.


def grid_sample(image, grid):
    """Bilinear sampling of image (H, W, C) at grid (h, w, 2) xy, zero padding, corner-aligned.

    Equals PyTorch `grid_sample(..., mode='bilinear', padding_mode='zeros', align_corners=True)`: each of the four
    neighbours contributes its bilinear weight only if it lies inside the image. Differentiable with respect to both
    the image and the grid. Returns (h, w, C).
    """
    image = jnp.asarray(image)
    if not jnp.issubdtype(image.dtype, jnp.floating):
        image = image.astype(jnp.float32)
    grid = jnp.asarray(grid, jnp.float32)
    if image.ndim != 3:
        raise ValueError(f"image must have shape (H, W, C) for one example; got {image.shape}")
    if grid.ndim != 3 or grid.shape[-1] != 2:
        raise ValueError(f"grid must have shape (h, w, 2) with [..., 0] = x; got {grid.shape}")
    height, width, channels = image.shape
    ix = (grid[..., 0] + 1.0) / 2.0 * (width - 1)
    iy = (grid[..., 1] + 1.0) / 2.0 * (height - 1)
    ix = jnp.clip(ix, -_OUTSIDE_MARGIN, width - 1 + _OUTSIDE_MARGIN)
    iy = jnp.clip(iy, -_OUTSIDE_MARGIN, height - 1 + _OUTSIDE_MARGIN)
    x0 = jnp.floor(ix)
    y0 = jnp.floor(iy)
    wx1 = ix - x0
    wy1 = iy - y0
    flat = image.reshape(height * width, channels)
    out = jnp.zeros(grid.shape[:2] + (channels,), image.dtype)
    for dx, wx in ((0, 1.0 - wx1), (1, wx1)):
        for dy, wy in ((0, 1.0 - wy1), (1, wy1)):
            xs = (x0 + dx).astype(jnp.int32)
            ys = (y0 + dy).astype(jnp.int32)
            inside = (xs >= 0) & (xs < width) & (ys >= 0) & (ys < height)
            index = jnp.clip(ys, 0, height - 1) * width + jnp.clip(xs, 0, width - 1)
            values = jnp.take(flat, index.reshape(-1), axis=0).reshape(out.shape)
            out = out + values * (wx * wy * inside)[..., None]
    return out


def warp_affine(image, theta, height, width):
    """Image (H, W, C) warped by the affine sampling map theta (6,) to an output of size (height, width)."""
    return grid_sample(image, affine_grid(theta, height, width))


def warp_tps(image, theta, height, width, reg=0.0):
    """Image (H, W, C) warped by the TPS sampling map theta (18,) to an output of size (height, width)."""
    return grid_sample(image, tps_grid(theta, height, width, reg))


def resize_bilinear(image, height, width):
    """Corner-aligned bilinear resize (no antialiasing, aspect ratio ignored), as the reference's input pipeline."""
    image = jnp.asarray(image, jnp.float32)
    return grid_sample(image, base_grid(height, width))


def normalize_image(image):
    """Image in 0..255 (uint8 or float, (..., 3)) -> x/255 then ImageNet mean/std, float32."""
    image = jnp.asarray(image, jnp.float32)
    if image.shape[-1] != 3:
        raise ValueError(f"image must have 3 channels (RGB) in its last axis; got shape {image.shape}")
    return (image / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
