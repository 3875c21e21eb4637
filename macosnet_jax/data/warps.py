"""Built-in synthetic data: `synthetic_warps`, CNNGeo-style strongly supervised pairs (SPEC §6.7).

A source image A is warped by a random affine or TPS θ into a target B, with the SPEC convention that θ is the
sampling map from B to A: B(q) = A(T_θ(q)). The grid loss of the strong stage then compares T_θ̂ and T_θ.

Why jax (not tf.data or numpy): the warp is a gather on a handful of images per step; done inside one jitted,
vmapped function it costs a few milliseconds, runs on whatever device the trainer uses, and can be called inside a
train step. The source is padded by mirror reflection before sampling so that warps never read black borders: we
reflect the *sampling coordinates* into [-1, 1] instead of padding the pixels, which is the same as an infinitely
large reflect-padded source (numpy's mode='reflect': mirror about the first/last pixel centre) at no memory cost.
"""
from __future__ import annotations

import functools
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from macosnet_jax import geometry
from macosnet_jax.data import poses, sources
from macosnet_jax.data.batches import WarpPairBatch
from macosnet_jax.data.sources import load_image_folder, process_slice  # noqa: F401  (importable from here too)

# SPEC §6.7 (newer CNNGeo draw).
AFFINE_RANGES = dict(rotation=np.pi / 12, shear=np.pi / 6, scale=(0.75, 1.25), translation=0.25)
TPS_AMPLITUDE = 0.4


def random_affine_theta(key, rotation=AFFINE_RANGES["rotation"], shear=AFFINE_RANGES["shear"],
                        scale=AFFINE_RANGES["scale"], translation=AFFINE_RANGES["translation"]):
    """A random affine θ (6,) as CNNGeo draws it: A = R(α) R(-s) diag(λ1, λ2) R(s), t ~ U(±translation)².

    α ~ U(±rotation) is the rotation, s ~ U(±shear) the angle of the axes of the anisotropic scale λ ~ U(scale).
    """
    k_rot, k_shear, k_scale, k_t = jax.random.split(key, 4)
    alpha = jax.random.uniform(k_rot, (), minval=-rotation, maxval=rotation)
    s = jax.random.uniform(k_shear, (), minval=-shear, maxval=shear)
    lam = jax.random.uniform(k_scale, (2,), minval=scale[0], maxval=scale[1])
    t = jax.random.uniform(k_t, (2,), minval=-translation, maxval=translation)

    def rot(a):
        return jnp.array([[jnp.cos(a), -jnp.sin(a)], [jnp.sin(a), jnp.cos(a)]])

    matrix = rot(alpha) @ rot(-s) @ jnp.diag(lam) @ rot(s)
    return jnp.concatenate([matrix, t[:, None]], axis=1).reshape(6)


def random_tps_theta(key, amplitude=TPS_AMPLITUDE):
    """A random TPS θ (18,): identity control points + U(±amplitude) per coordinate (CNNGeo)."""
    return jnp.asarray(geometry.IDENTITY_TPS) + jax.random.uniform(key, (18,), minval=-amplitude, maxval=amplitude)


def reflect_coordinates(coords):
    """Folds normalised coordinates into [-1, 1] by mirror reflection about ±1 (period 4): 1.5 -> 0.5, -1.2 -> -0.8."""
    return 1.0 - jnp.abs(jnp.mod(coords + 1.0, 4.0) - 2.0)


def theta_points(theta, points):
    """Applies θ (6,) affine or (18,) TPS to points (P, 2)."""
    if theta.shape[-1] == 6:
        return geometry.affine_points(theta, points)
    return geometry.tps_points(theta, points)


def theta_grid(theta, height, width):
    if theta.shape[-1] == 6:
        return geometry.affine_grid(theta, height, width)
    return geometry.tps_grid(theta, height, width)


def invert_points(theta, points, iterations=12):
    """Finds q with T_θ(q) = p for points p (P, 2): Newton's method from p (exact in one step for an affine).

    Returns (q (P, 2), converged (P,) bool: |T_θ(q) - p| < 1e-4). Target keypoints of a warp pair are the source
    keypoints pulled back this way.
    """
    def one(p):
        def step(q, _):
            jac = jax.jacfwd(lambda x: theta_points(theta, x[None])[0])(q)
            residual = theta_points(theta, q[None])[0] - p
            return q - poses.inverse_2x2(jac) @ residual, None

        q, _ = jax.lax.scan(step, p, None, length=iterations)
        return q

    q = jax.vmap(one)(points)
    error = jnp.linalg.norm(theta_points(theta, q) - points, axis=-1)
    return q, error < 1e-4


def warp_example(image, theta, size, mask=None, keypoints=None, visible=None):
    """Warps one source image (H, W, C) by θ into a size x size target, reading a mirror-reflected source.

    keypoints: (K, 2) 1-indexed pixels of the source with visible (K,) bool. Returns a dict with 'image_a' (the
    source resized to size x size, corner-aligned), 'image_b' (the target), float32 0..255, and 'mask_a'/'mask_b'
    (float 0..1) and 'keypoints_a'/'keypoints_b'/'visible_a'/'visible_b' when given.
    """
    height, width = image.shape[:2]
    grid = reflect_coordinates(theta_grid(theta, size, size))
    out = {"image_a": geometry.resize_bilinear(image, size, size), "image_b": geometry.grid_sample(image, grid)}
    if mask is not None:
        m = mask.astype(jnp.float32)[..., None]
        out["mask_a"] = geometry.resize_bilinear(m, size, size)[..., 0]
        out["mask_b"] = geometry.grid_sample(m, grid)[..., 0]
    if keypoints is not None:
        normalised = geometry.pixels_to_normalized(keypoints, height, width)
        target, converged = invert_points(theta, normalised)
        inside = jnp.all(jnp.abs(target) <= 1.0, axis=-1)
        out["keypoints_a"] = geometry.normalized_to_pixels(normalised, size, size)
        out["keypoints_b"] = geometry.normalized_to_pixels(target, size, size)
        out["visible_a"] = visible
        out["visible_b"] = visible & converged & inside
    return out


@functools.partial(jax.jit, static_argnames=("kind", "size"))
def synthetic_warp_batch(key, images, kind="affine", size=None, masks=None, keypoints=None,
                         visible=None) -> WarpPairBatch:
    """A batch of strong pairs from source images (B, H, W, 3) (uint8 or float 0..255), one θ per image.

    kind: 'affine' (θ (B, 6)) or 'tps' (θ (B, 18)), drawn with SPEC §6.7's ranges from `key` (fold the step and
    process into it for a reproducible stream). size: output side (default H). Returns a `WarpPairBatch`: 'image_a',
    'image_b' uint8 (B, S, S, 3), 'theta' float32, plus masks uint8 0/1 and keypoints (-1 where not visible) if
    given. θ maps B to A: image_b(q) = image_a(T_θ(q)) (up to the reflection outside A).
    """
    size = images.shape[1] if size is None else size
    keys = jax.random.split(key, images.shape[0])
    if kind == "affine":
        theta = jax.vmap(random_affine_theta)(keys)
    elif kind == "tps":
        theta = jax.vmap(random_tps_theta)(keys)
    else:
        raise ValueError(f"kind must be 'affine' or 'tps'; got {kind!r}")
    images = images.astype(jnp.float32)
    out = jax.vmap(lambda im, th, m, k, v: warp_example(im, th, size, m, k, v))(images, theta, masks, keypoints,
                                                                                  visible)
    result = {"theta": theta}
    for name in ("image_a", "image_b"):
        result[name] = jnp.clip(jnp.round(out[name]), 0, 255).astype(jnp.uint8)
    for name in ("mask_a", "mask_b"):
        if name in out:
            result[name] = (out[name] >= 0.5).astype(jnp.uint8)
    for side in ("a", "b"):
        if "keypoints_" + side in out:
            vis = out["visible_" + side]
            result["keypoints_" + side] = jnp.where(vis[..., None], out["keypoints_" + side], -1.0)
            result["visible_" + side] = vis
    return result


def make_warp_iterator(source, *, batch_size, image_size, seed, kind="affine", start_step=0, process_index=0,
                       process_count=1) -> Iterator[WarpPairBatch]:
    """An endless iterator of strong-pair batches (`batches.WarpPairBatch`) from an image source, resumable by step.

    source: an image set as `sources.image_set` reads it: images uint8 (N, H, W, 3), a dict with 'image' (+ optional
    'mask', 'keypoints', 'visible'), a folder path, or a tf.data/tfds dataset of examples with 'image'. This
    process uses the contiguous slice [N p / P, N (p + 1) / P) of the images and yields batch_size (the
    per-process batch) pairs per step; batch k is a pure function of (seed, start_step + k, process_index): images
    from a per-epoch permutation of the slice, θ from jax.random keys folded with (step, process). Keys: see
    `synthetic_warp_batch`, plus 'index' (N-space).
    """
    data = sources.image_set(source, image_size)
    n = len(data["image"])
    lo, hi = process_slice(n, process_index, process_count)
    if hi - lo < 1:
        raise ValueError(f"process {process_index}/{process_count} gets no images from a source of {n}")
    local = {k: v[lo:hi] for k, v in data.items()}
    base = jax.random.key(seed)
    step = start_step
    while True:
        indices = epoch_indices(seed, process_index, hi - lo, step * batch_size, batch_size)
        key = jax.random.fold_in(jax.random.fold_in(base, process_index), step)
        kwargs = {}
        if "mask" in local:
            kwargs["masks"] = local["mask"][indices]
        if "keypoints" in local:
            kwargs["keypoints"] = local["keypoints"][indices].astype(np.float32)
            vis = local.get("visible", np.all(local["keypoints"] >= 1, axis=-1))
            kwargs["visible"] = np.asarray(vis[indices], bool)
        batch = jax.device_get(synthetic_warp_batch(key, local["image"][indices], kind=kind, size=image_size,
                                                    **kwargs))
        batch = {k: np.asarray(v) for k, v in batch.items()}
        batch["index"] = indices + lo
        yield batch
        step += 1


def epoch_indices(seed, process_index, n, start, count):
    """Indices (count,) of positions start..start+count-1 of an endless stream of per-epoch permutations of n.

    Epoch e uses the permutation of np.random.default_rng((seed, process_index, e)): a pure function of the
    position, so a resumed run reproduces the stream exactly.
    """
    positions = np.arange(start, start + count)
    epochs = positions // n
    out = np.empty(count, np.int64)
    for e in np.unique(epochs):
        perm = np.random.default_rng([seed, process_index, int(e), 0x5E9]).permutation(n)
        sel = epochs == e
        out[sel] = perm[positions[sel] % n]
    return out
