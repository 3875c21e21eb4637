"""Built-in synthetic data: `synthetic_objects` (categories of textured objects with masks and landmarks).

Why: the real datasets need a manual download, yet the CPU demo and the tests must show that matching and
co-segmentation *learn*. A procedural set gives exact ground truth (masks, named landmarks, categories) for PCK and
P/J with no download, and it is fast enough to regenerate inside a 10-minute demo budget.

What an image is (deterministic from (seed, index): parameters drawn in numpy from one RNG per image, pixels
rendered by a jitted jax function vmapped over a fixed-size chunk, where XLA fuses the per-pixel work):
- A category is a shape family, fixed for all seeds: a radial Fourier outline R(phi), a two-colour palette, a
  coloured "part" disc at a fixed place of the object, a texture frequency and K = 10 named landmarks (9 inside
  the outline at fixed angles, plus the centre) in the object's canonical frame.
- An instance is the family's object with its own texture (stripes, dots or checker), colour jitter and pose: a
  random affine (rotation, anisotropic scale, shear, shift) plus a smooth non-rigid deformation (a low-frequency
  sinusoidal displacement field), so two images of one category are related by an affine plus a small warp.
- The object is pasted on a background that also holds smaller distractor objects of *other* categories, then
  pixel noise is added. Two backgrounds: 'clutter' (colour gratings and textured ellipses/rectangles drawn for
  each image alone) and 'backdrop' (each category's own scene — a two-colour ground with fixed blobs — that every
  image of the category sees through its own pose, independent of the object's: background that matches across
  a category's images but moves differently from the object, so it misleads a matcher that weighs every cell
  alike, the situation the paper's foreground-weighted matching addresses).

Coordinates follow SPEC §1: normalised corner-aligned [-1, 1]; keypoints are 1-indexed pixels (P, 2) xy.
An instance's pose (the generating map image point q -> canonical point u = A^-1 (D(q) - t), D(q) = q + d(q),
and its inverse that places the landmarks) is `data/poses.py`.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from macosnet_jax import geometry
from macosnet_jax.data import poses
from macosnet_jax.data.poses import canonical_to_image, image_to_canonical, inverse_2x2  # noqa: F401 (public here too)

NUM_LANDMARKS = 10
_NUM_HARMONICS = 5  # outline harmonics k = 2..6
_FAMILY_SEED = 0x5EED  # families are the same for every dataset seed: train and test share categories
_MAX_CLUTTER = 18
_MAX_DISTRACTORS = 2
_LANDMARK_RADIUS = 0.8  # boundary landmarks sit at 0.8 R(phi): strictly inside the object, a few pixels from its edge
_BACKDROP_BLOBS = 8
BACKGROUNDS = ("clutter", "backdrop")
_CHUNK = 32  # images rendered at once: bounds memory at (CHUNK, S, S, 3) float32 temporaries


@dataclasses.dataclass(frozen=True)
class Families:
    """Per-category constants (arrays indexed by category c)."""

    harmonic_amp: np.ndarray  # (C, H) outline Fourier amplitudes
    harmonic_phase: np.ndarray  # (C, H)
    radius_scale: np.ndarray  # (C,) so that max_phi R(phi) = 1
    palette: np.ndarray  # (C, 2, 3) primary/secondary colours 0..255
    part_center: np.ndarray  # (C, 2) canonical position of the part disc
    part_radius: np.ndarray  # (C,)
    part_color: np.ndarray  # (C, 3)
    texture_freq: np.ndarray  # (C,) radians per canonical unit
    landmarks: np.ndarray  # (C, K, 2) canonical landmark positions
    backdrop_palette: np.ndarray  # (C, 2, 3) the category's scene: two colours of its ground pattern
    backdrop_freq: np.ndarray  # (C, 2, 2) two grating wave vectors (radians per backdrop unit)
    backdrop_blob_center: np.ndarray  # (C, B, 2) fixed landmarks of the scene (blobs) in the backdrop frame
    backdrop_blob_radius: np.ndarray  # (C, B)
    backdrop_blob_color: np.ndarray  # (C, B, 3)


def outline_radius(families: Families, category, phi):
    """R(phi) of the outline of each category (broadcasts category (...,) against phi (...))."""
    k = np.arange(2, 2 + _NUM_HARMONICS, dtype=np.float32)
    amp = families.harmonic_amp[category]  # (..., H)
    phase = families.harmonic_phase[category]
    wave = np.sum(amp * np.cos(k * phi[..., None] + phase), axis=-1)
    return families.radius_scale[category] * (1.0 + wave)


def make_families(num_categories: int) -> Families:
    """The shape families of categories 0..num_categories-1 (independent of any dataset seed)."""
    if num_categories < 1:
        raise ValueError(f"num_categories must be >= 1; got {num_categories}")
    amp, phase, palette, part_c, part_r, part_col, freq, angles = [], [], [], [], [], [], [], []
    for c in range(num_categories):
        rng = np.random.default_rng([_FAMILY_SEED, c])
        a = rng.uniform(0.0, 1.0, _NUM_HARMONICS) / np.arange(2, 2 + _NUM_HARMONICS)
        a *= rng.uniform(0.25, 0.45) / a.sum()  # total wobble 25-45% of the radius: distinct, still star-shaped
        amp.append(a)
        phase.append(rng.uniform(-np.pi, np.pi, _NUM_HARMONICS))
        hue = (c / num_categories + rng.uniform(-0.05, 0.05)) % 1.0  # spread hues so families differ in colour
        palette.append([_hsv_to_rgb(hue, 0.75, 0.9), _hsv_to_rgb((hue + 0.5) % 1.0, 0.5, 0.45)])
        psi = rng.uniform(-np.pi, np.pi)
        part_c.append(rng.uniform(0.25, 0.4) * np.array([np.cos(psi), np.sin(psi)]))
        part_r.append(rng.uniform(0.15, 0.22))
        part_col.append(_hsv_to_rgb((hue + 0.25) % 1.0, 0.9, 1.0))
        freq.append(rng.uniform(10.0, 18.0))
        angles.append(rng.uniform(-np.pi, np.pi) + np.linspace(0, 2 * np.pi, NUM_LANDMARKS - 1, endpoint=False)
                      + rng.uniform(-0.15, 0.15, NUM_LANDMARKS - 1))
    amp = np.asarray(amp, np.float32)
    phase = np.asarray(phase, np.float32)
    dense = np.linspace(-np.pi, np.pi, 721, dtype=np.float32)
    k = np.arange(2, 2 + _NUM_HARMONICS, dtype=np.float32)
    peak = np.max(1.0 + np.sum(amp[:, None, :] * np.cos(k * dense[None, :, None] + phase[:, None, :]), -1), axis=1)
    partial = Families(amp, phase, (1.0 / peak).astype(np.float32), np.asarray(palette, np.float32),
                       np.asarray(part_c, np.float32), np.asarray(part_r, np.float32),
                       np.asarray(part_col, np.float32), np.asarray(freq, np.float32),
                       np.zeros((num_categories, NUM_LANDMARKS, 2), np.float32), **_make_backdrops(num_categories))
    phi = np.asarray(angles, np.float32)  # (C, K-1)
    radius = _LANDMARK_RADIUS * outline_radius(partial, np.arange(num_categories)[:, None], phi)
    boundary = np.stack([radius * np.cos(phi), radius * np.sin(phi)], axis=-1)
    landmarks = np.concatenate([boundary, np.zeros((num_categories, 1, 2), np.float32)], axis=1)
    return dataclasses.replace(partial, landmarks=landmarks.astype(np.float32))


def _make_backdrops(num_categories: int) -> dict:
    """Each category's scene (its own RNG stream, so the shape families do not depend on it): two colours, two
    gratings and `_BACKDROP_BLOBS` coloured blobs at fixed places of a backdrop frame. Every image of the
    category views this one scene through its own pose, independent of the object's."""
    palette, freq, center, radius, color = [], [], [], [], []
    for c in range(num_categories):
        rng = np.random.default_rng([_FAMILY_SEED, c, 0xBAC])
        hue = rng.uniform(0.0, 1.0)
        palette.append([_hsv_to_rgb(hue, 0.6, 0.85), _hsv_to_rgb((hue + 0.4) % 1.0, 0.6, 0.35)])
        freq.append(rng.uniform(5.0, 11.0, (2, 1)) * _unit(rng.uniform(-np.pi, np.pi) + np.array([0.0, np.pi / 2])))
        center.append(rng.uniform(-1.3, 1.3, (_BACKDROP_BLOBS, 2)))
        radius.append(rng.uniform(0.12, 0.3, _BACKDROP_BLOBS))
        color.append([_hsv_to_rgb(rng.uniform(0.0, 1.0), 0.8, rng.uniform(0.5, 1.0)) for _ in range(_BACKDROP_BLOBS)])
    return {"backdrop_palette": np.asarray(palette, np.float32), "backdrop_freq": np.asarray(freq, np.float32),
            "backdrop_blob_center": np.asarray(center, np.float32),
            "backdrop_blob_radius": np.asarray(radius, np.float32),
            "backdrop_blob_color": np.asarray(color, np.float32)}


def _hsv_to_rgb(h, s, v):
    i = int(h * 6.0) % 6
    f = h * 6.0 - int(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return [255.0 * x for x in rgb]


# ----------------------------------------------------------------------------------------------------------------
# Per-image random parameters (one small RNG per (seed, index): any subset of indices renders identically).


def _draw_image_params(seed, index, num_categories, families):
    """All random parameters of image `index` as a flat dict of float32/int32 arrays (one RNG per (seed, index))."""
    rng = np.random.default_rng([seed, index, 0xDA7A])
    category = index % num_categories  # balanced categories: every category has images in any long range
    p = {"category": category}
    # Rotation ±15° and scale 0.45-0.6 per instance: the relative pose of two instances then stays mostly inside the
    # strong stage's training range (SPEC §6.7), which is what lets a weak stage start from it.
    p["matrix"], p["t"], p["amp"], p["freq"], p["phase"] = poses.draw_pose(rng, (0.45, 0.6), 0.22, np.pi / 12, 0.03)
    p["texture"] = rng.integers(0, 3)
    p["texture_dir"] = rng.uniform(-np.pi, np.pi)
    p["texture_freq"] = families.texture_freq[category] * rng.uniform(0.85, 1.15)
    p["jitter"] = rng.uniform(-25, 25, 3)
    p["texture_phase"] = rng.uniform(-np.pi, np.pi, 2)
    # Background: mean colour + 3 colour gratings.
    p["bg_color"] = rng.uniform(40, 215, 3)
    p["bg_freq"] = np.pi * rng.uniform(1.0, 9.0, (3, 1)) * _unit(rng.uniform(-np.pi, np.pi, 3))  # (3, 2)
    p["bg_phase"] = rng.uniform(-np.pi, np.pi, 3)
    p["bg_amp"] = rng.uniform(-45, 45, (3, 3))  # (grating, rgb)
    # Clutter: ellipses and rectangles, half of them striped.
    n_clutter = rng.integers(10, _MAX_CLUTTER + 1)
    p["cl_active"] = np.arange(_MAX_CLUTTER) < n_clutter
    p["cl_center"] = rng.uniform(-1.1, 1.1, (_MAX_CLUTTER, 2))
    p["cl_axes"] = rng.uniform(0.05, 0.25, (_MAX_CLUTTER, 2))
    p["cl_angle"] = rng.uniform(-np.pi, np.pi, _MAX_CLUTTER)
    p["cl_rect"] = rng.random(_MAX_CLUTTER) < 0.5
    p["cl_color"] = rng.uniform(0, 255, (_MAX_CLUTTER, 3))
    p["cl_striped"] = rng.random(_MAX_CLUTTER) < 0.5
    p["cl_freq"] = rng.uniform(15, 40, _MAX_CLUTTER)
    # Distractors: smaller objects of other categories, behind the main object (slot axis first).
    n_distract = rng.integers(1, _MAX_DISTRACTORS + 1) if num_categories > 1 else 0
    p["d_active"] = np.arange(_MAX_DISTRACTORS) < n_distract
    p["d_category"] = (category + rng.integers(1, max(num_categories, 2), _MAX_DISTRACTORS)) % num_categories
    distractor_poses = [poses.draw_pose(rng, (0.18, 0.3), 0.85, np.pi, 0.0) for _ in range(_MAX_DISTRACTORS)]
    for i, key in enumerate(("matrix", "t", "amp", "freq", "phase")):
        p["d_" + key] = np.stack([pose[i] for pose in distractor_poses])
    p["d_texture"] = rng.integers(0, 3, _MAX_DISTRACTORS)
    p["d_texture_dir"] = rng.uniform(-np.pi, np.pi, _MAX_DISTRACTORS)
    p["d_jitter"] = rng.uniform(-25, 25, (_MAX_DISTRACTORS, 3))
    p["d_texture_phase"] = rng.uniform(-np.pi, np.pi, (_MAX_DISTRACTORS, 2))
    p["noise_sigma"] = rng.uniform(2.0, 8.0)
    p["noise_seed"] = rng.integers(0, 2**31)
    # Where this image sees its category's scene: its own rotation, scale and shift, independent of the object's
    # pose (drawn last, so the other parameters are the same with either background).
    p["bk_matrix"], p["bk_t"] = poses.draw_pose(rng, (0.55, 0.85), 0.35, np.pi / 9, 0.0)[:2]
    return {k: np.asarray(v, np.int32 if np.asarray(v).dtype.kind in "iub" else np.float32) for k, v in p.items()}


def _unit(angle):
    return np.stack([np.cos(angle), np.sin(angle)], axis=-1)


# ----------------------------------------------------------------------------------------------------------------
# Rendering of one image in jnp (jit + vmap over a fixed-size chunk: XLA fuses the per-pixel work, ~10x numpy).


def _outline_radius_jnp(fam, category, cos_phi, sin_phi):
    """R(phi) from cos/sin of phi: cos(k phi + p) by the complex recurrence (multiplies, not transcendentals)."""
    amp, phase = fam["harmonic_amp"][category], fam["harmonic_phase"][category]
    cos_k, sin_k = cos_phi, sin_phi
    wave = 0.0
    for k in range(2, 2 + _NUM_HARMONICS):
        cos_k, sin_k = cos_k * cos_phi - sin_k * sin_phi, sin_k * cos_phi + cos_k * sin_phi  # now k phi
        wave = wave + amp[k - 2] * (cos_k * jnp.cos(phase[k - 2]) - sin_k * jnp.sin(phase[k - 2]))
    return fam["radius_scale"][category] * (1.0 + wave)


def _square_wave(x):
    """+1/-1 with period 2 pi, the sign of sin(x), via floor (much cheaper than sin per pixel on CPU)."""
    return 1.0 - 2.0 * (jnp.floor(x / jnp.pi) % 2.0)


def _object_layer(q, fam, category, pose, texture, texture_dir, texture_freq, jitter, texture_phase):
    """Colours (S, S, 3) and coverage (S, S) bool of one object with pose (matrix, t, amp, freq, phase)."""
    u = poses.image_to_canonical(q, *pose)
    r = jnp.sqrt(jnp.sum(u * u, axis=-1))
    safe = jnp.maximum(r, 1e-12)
    radius = _outline_radius_jnp(fam, category, jnp.where(r > 0, u[..., 0] / safe, 1.0), u[..., 1] / safe)
    inside = r < radius
    # Texture in canonical coordinates, so it moves with the object (a real correspondence cue).
    direction = jnp.stack([jnp.cos(texture_dir), jnp.sin(texture_dir)])
    wave_a = _square_wave(texture_freq * (u @ direction) + texture_phase[0])
    wave_b = _square_wave(texture_freq * (u @ jnp.stack([-direction[1], direction[0]])) + texture_phase[1])
    coarse_a = _square_wave(0.5 * texture_freq * (u @ direction) + texture_phase[0])
    coarse_b = _square_wave(0.5 * texture_freq * (u @ jnp.stack([-direction[1], direction[0]])) + texture_phase[1])
    stripes = wave_a > 0
    dots = (wave_a > 0) & (wave_b > 0) & (coarse_a > 0)  # sparse blobs
    checker = coarse_a * coarse_b > 0
    pattern = jnp.where(texture == 0, stripes, jnp.where(texture == 1, dots, checker))
    palette = jnp.clip(fam["palette"][category] + jitter, 0, 255)  # (2, 3)
    color = jnp.where(pattern[..., None], palette[0], palette[1])
    part = jnp.sum((u - fam["part_center"][category]) ** 2, -1) < fam["part_radius"][category] ** 2
    color = jnp.where(part[..., None], fam["part_color"][category], color)
    rim = inside & (r > radius - 0.07)  # a dark rim: an outline cue that survives texture changes
    color = jnp.where(rim[..., None], 0.25 * color, color)
    return color, inside


def _paste_clutter(j, image, p, q):
    rel = q - p["cl_center"][j]
    c, s = jnp.cos(p["cl_angle"][j]), jnp.sin(p["cl_angle"][j])
    x = (rel[..., 0] * c + rel[..., 1] * s) / p["cl_axes"][j, 0]
    y = (-rel[..., 0] * s + rel[..., 1] * c) / p["cl_axes"][j, 1]
    shape = jnp.where(p["cl_rect"][j] > 0, jnp.maximum(jnp.abs(x), jnp.abs(y)) < 1.0, x * x + y * y < 1.0)
    shape &= p["cl_active"][j] > 0
    dark = (p["cl_striped"][j] > 0) & (_square_wave(p["cl_freq"][j] * rel[..., 0]) > 0)
    return jnp.where(shape[..., None], p["cl_color"][j] * jnp.where(dark, 0.5, 1.0)[..., None], image)


def _backdrop_layer(q, fam, category, matrix, t):
    """The category's scene seen through the image's backdrop pose: colours (S, S, 3).

    A two-colour pattern (the sign of two gratings) with coloured, dark-rimmed blobs, all in the backdrop frame
    v = A^-1 (q - t): the same scene in every image of the category, moving independently of the object.
    """
    v = (q - t) @ poses.inverse_2x2(jnp.asarray(matrix)).T
    freq = fam["backdrop_freq"][category]  # (2, 2)
    pattern = _square_wave(v @ freq[0]) * _square_wave(v @ freq[1]) > 0
    palette = fam["backdrop_palette"][category]
    image = jnp.where(pattern[..., None], palette[0], palette[1])
    for j in range(_BACKDROP_BLOBS):
        d2 = jnp.sum((v - fam["backdrop_blob_center"][category, j]) ** 2, -1)
        r = fam["backdrop_blob_radius"][category, j]
        image = jnp.where((d2 < r * r)[..., None], fam["backdrop_blob_color"][category, j], image)
        image = jnp.where(((d2 < r * r) & (d2 > (0.75 * r) ** 2))[..., None], 0.3 * image, image)
    return image


def _render_one(p, fam, q, background="clutter"):
    """One image: float colours (S, S, 3) without noise, object mask (S, S) bool, landmarks (K, 2) normalised.

    background: 'clutter' (colour gratings and shapes drawn for this image alone) or 'backdrop' (the category's
    scene, shared by its images, see `_backdrop_layer`).
    """
    if background == "backdrop":
        image = _backdrop_layer(q, fam, p["category"], p["bk_matrix"], p["bk_t"])
    else:
        waves = jnp.sin(q @ p["bg_freq"].T + p["bg_phase"])  # (S, S, 3 gratings)
        image = p["bg_color"] + waves @ p["bg_amp"]
        # A loop, not an unrolled Python for: keeps the XLA compile short (it is part of the demo's budget).
        image = jax.lax.fori_loop(0, _MAX_CLUTTER, lambda j, im: _paste_clutter(j, im, p, q), image)
    # The distractors and the object share one vmapped layer (one compiled body instead of three); the object
    # is last so that it is pasted on top. Distractors have zero displacement amplitude: purely affine.
    keys = ("matrix", "t", "amp", "freq", "phase")
    pose = tuple(p[k] for k in keys)
    stack = lambda d, m: jnp.concatenate([d, m[None]], axis=0)  # noqa: E731
    layers = jax.vmap(_object_layer, in_axes=(None, None, 0, 0, 0, 0, 0, 0, 0))(
        q, fam, stack(p["d_category"], p["category"]), tuple(stack(p["d_" + k], p[k]) for k in keys),
        stack(p["d_texture"], p["texture"]), stack(p["d_texture_dir"], p["texture_dir"]),
        stack(fam["texture_freq"][p["d_category"]], p["texture_freq"]), stack(p["d_jitter"], p["jitter"]),
        stack(p["d_texture_phase"], p["texture_phase"]))
    colors, covers = layers
    active = jnp.concatenate([p["d_active"] > 0, jnp.ones((1,), bool)])
    for j in range(_MAX_DISTRACTORS + 1):
        image = jnp.where((covers[j] & active[j])[..., None], colors[j], image)
    mask = covers[-1]
    landmarks = poses.canonical_to_image(fam["landmarks"][p["category"]], *pose)
    return image, mask, landmarks


@functools.partial(jax.jit, static_argnums=(2, 3))
def _render_batch(params, fam, size, background):
    q = geometry.base_grid(size, size)
    return jax.vmap(_render_one, in_axes=(0, None, None, None))(params, fam, q, background)


def _render_chunk(params, size, families, background):
    n = len(params)
    # Pad to a fixed chunk so the jitted renderer compiles once per size and every image is computed by the same
    # program (image i does not depend on which other images share its chunk).
    padded = params + [params[-1]] * (_CHUNK - n)
    stacked = {k: np.stack([p[k] for p in padded]) for k in padded[0]}
    stacked.pop("noise_seed")
    stacked.pop("noise_sigma")
    fam = {k: jnp.asarray(v) for k, v in dataclasses.asdict(families).items()}
    image, mask, landmarks = jax.device_get(_render_batch(stacked, fam, size, background))
    noise = np.stack([np.random.default_rng(int(p["noise_seed"])).standard_normal((size, size, 3), np.float32)
                      * p["noise_sigma"] for p in params])
    image = np.clip(np.rint(image[:n] + noise), 0, 255).astype(np.uint8)
    category = np.array([int(p["category"]) for p in params])
    return image, mask[:n].astype(np.uint8), np.asarray(landmarks[:n], np.float32), category


def render_synthetic_objects(indices, size: int, seed: int, num_categories: int = 6,
                             background: str = "clutter") -> dict:
    """Renders the images `indices` of the synthetic_objects set (seed, num_categories) at size x size.

    Image i is a pure function of (seed, i, size, num_categories, background): any subset or chunking renders
    identically. background: 'clutter' (each image its own cluttered background) or 'backdrop' (each category's
    own scene, seen by each image through its own pose: background that matches across the images of a category
    but moves independently of the object, the clutter that misleads a matcher without foreground weights). The
    object, its pose, the distractors and the noise are the same for both.

    Returns a dict of numpy arrays, N = len(indices):
      'image' uint8 (N, S, S, 3); 'mask' uint8 (N, S, S) 0/1 (the object, on top of everything);
      'keypoints' float32 (N, K, 2) xy 1-indexed pixels; 'visible' bool (N, K) (inside the image);
      'category' int32 (N,); 'index' int64 (N,).
    """
    if size < 8:
        raise ValueError(f"size must be >= 8 pixels; got {size}")
    if background not in BACKGROUNDS:
        raise ValueError(f"background must be one of {BACKGROUNDS}; got {background!r}")
    indices = np.asarray(indices, np.int64).reshape(-1)
    families = make_families(num_categories)
    out = {k: [] for k in ("image", "mask", "keypoints", "category")}
    for start in range(0, len(indices), _CHUNK):
        params = [_draw_image_params(seed, int(i), num_categories, families) for i in indices[start:start + _CHUNK]]
        for key, value in zip(("image", "mask", "keypoints", "category"), _render_chunk(params, size, families, background)):
            out[key].append(value)
    if not len(indices):
        empty = {"image": np.zeros((0, size, size, 3), np.uint8), "mask": np.zeros((0, size, size), np.uint8),
                 "keypoints": np.zeros((0, NUM_LANDMARKS, 2), np.float32), "category": np.zeros((0,), np.int32)}
        out = {k: [v] for k, v in empty.items()}
    result = {k: np.concatenate(v) for k, v in out.items()}
    normalised = result["keypoints"]
    result["visible"] = np.all((normalised >= -1.0) & (normalised <= 1.0), axis=-1)
    pixels = geometry.normalized_to_pixels(normalised.reshape(-1, 2), size, size)  # 1-indexed (SPEC §1)
    result["keypoints"] = np.asarray(pixels, np.float32).reshape(normalised.shape)
    result["category"] = result["category"].astype(np.int32)
    result["index"] = indices
    return result


def make_synthetic_objects(num_images: int, size: int = 96, seed: int = 0, num_categories: int = 6,
                           background: str = "clutter") -> dict:
    """The first `num_images` images of the synthetic_objects set (see `render_synthetic_objects`)."""
    if num_images < 0:
        raise ValueError(f"num_images must be >= 0; got {num_images}")
    return render_synthetic_objects(np.arange(num_images), size, seed, num_categories, background)


def instance_pose(seed: int, index: int, num_categories: int = 6):
    """The generating map (matrix (2, 2), t (2,), amp, freq, phase) of image `index`: image_to_canonical's args."""
    p = _draw_image_params(seed, index, num_categories, make_families(num_categories))
    return tuple(p[k] for k in ("matrix", "t", "amp", "freq", "phase"))


def backdrop_pose(seed: int, index: int, num_categories: int = 6):
    """(matrix (2, 2), t (2,)) of image `index`'s view of its category's scene: image q = matrix v + t."""
    p = _draw_image_params(seed, index, num_categories, make_families(num_categories))
    return p["bk_matrix"], p["bk_t"]


def make_synthetic_pairs(num_images: int, size: int = 96, seed: int = 1000, num_categories: int = 6,
                         num_pairs: int = 200, background: str = "clutter") -> list[dict]:
    """Held-out evaluation pairs (A, B) of one category from `make_synthetic_objects(num_images, size, seed, ...)`.

    Pairs are drawn with a numpy RNG seeded by `seed` (deterministic); only the landmarks visible in both images
    are kept. Returns `num_pairs` dicts: 'pair_id' ('a-b'), 'category' (int), 'image_a', 'image_b' (uint8
    (size, size, 3)), 'keypoints_a', 'keypoints_b' ((P, 2) 1-indexed pixels, P <= NUM_LANDMARKS), 'mask_a',
    'mask_b' ((size, size) ground truth). Use a seed different from the training set's for held-out instances.
    """
    images = make_synthetic_objects(int(num_images), int(size), int(seed), int(num_categories), background)
    rng = np.random.default_rng(int(seed))
    by_category = {int(c): np.flatnonzero(images["category"] == c) for c in np.unique(images["category"])}
    by_category = {c: members for c, members in by_category.items() if len(members) >= 2}
    if num_pairs > 0 and not by_category:
        raise ValueError(f"make_synthetic_pairs: no category has two of the {num_images} images; use more images")
    pairs, attempts = [], 0
    while len(pairs) < int(num_pairs):
        attempts += 1
        if attempts > 100 * int(num_pairs) + 1000:
            raise ValueError(f"make_synthetic_pairs: found only {len(pairs)} of {num_pairs} pairs with a landmark "
                             f"visible in both images among {num_images} images")
        category = int(rng.choice(sorted(by_category)))
        a, b = rng.choice(by_category[category], size=2, replace=False)
        valid = images["visible"][a] & images["visible"][b]
        if not valid.any():
            continue
        pairs.append({"pair_id": f"{a}-{b}", "category": category,
                      "image_a": images["image"][a], "image_b": images["image"][b],
                      "keypoints_a": images["keypoints"][a][valid], "keypoints_b": images["keypoints"][b][valid],
                      "mask_a": images["mask"][a], "mask_b": images["mask"][b]})
    return pairs
