"""Zero-shot keypoint transfer on frozen DINOv2 patch features: no training, the project's PCK conventions.

For a pair (A, B) both images are resized to S×S (corner-aligned bilinear, aspect ratio ignored, ImageNet
normalisation: `predict.preprocess`, the matcher's own input pipeline) and encoded once; f_A, f_B (h, w, D) are the
L2-normalised `x_norm_patchtokens` on the (h, w) = (S/14, S/14) patch grid. Patch (i, j) is centred at pixel index
(14·i + 6.5, 14·j + 6.5) of the S×S frame, i.e. normalised coordinate -1 + 2·(14·j + 6.5)/(S - 1) (x) — the same
corner-aligned [-1, 1] frame as `geometry.pixels_to_normalized`, so a point's normalised coordinate is the same in
the original image and in its S×S resize.

A keypoint p of B gets the descriptor d = f_B bilinearly sampled at p's grid position (clamped to the patch
centres), re-normalised; s = f_A · d (h·w cosine similarities). Then
  'nn':          p ↦ the centre of argmax s (nearest neighbour);
  'soft_argmax': p ↦ Σ softmax(s / temperature) · centres (expected centre under a sharpened similarity).
The point comes back in A's original pixels. Scores: `evaluation.dataset_driver.evaluate_dataset` with a
predictor returning {'point_transfer': ...}, so every benchmark builder is scored under its own protocol (SPair:
bbox, α 0.1; PF-*: img224 and kp_extent, α .05/.1/.15).

Command line (tables to --out_dir as results_<method>.txt/.json and to stdout):
  python -m macosnet_jax.zeroshot --weights dinov2_vits14_pretrain.pth --dataset spair71k --data_dir /data/tfds \\
      --image_size 224 --out_dir /runs/zeroshot_spair
  (--random_size tiny: a random tiny ViT instead of --weights, for smoke runs on the dummy builders.)
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from macosnet_jax import errors, geometry
from macosnet_jax.models import dinov2 as dinov2_lib

METHODS = ("nn", "soft_argmax")


def patch_centres(grid: int, image_size: int) -> jax.Array:
    """Normalised coordinates (grid,) of the patch centres along one axis of an S×S image."""
    pixel_index = dinov2_lib.PATCH_SIZE * jnp.arange(grid, dtype=jnp.float32) + (dinov2_lib.PATCH_SIZE - 1) / 2
    return -1.0 + 2.0 * pixel_index / (image_size - 1)


def sample_descriptors(features: jax.Array, points: jax.Array, image_size: int) -> jax.Array:
    """features (h, w, D), points (P, 2) xy normalised -> (P, D) bilinear samples, clamped to the patch centres."""
    h, w, _ = features.shape
    step = 2.0 * dinov2_lib.PATCH_SIZE / (image_size - 1)
    col = jnp.clip((points[:, 0] - patch_centres(w, image_size)[0]) / step, 0.0, w - 1.0)
    row = jnp.clip((points[:, 1] - patch_centres(h, image_size)[0]) / step, 0.0, h - 1.0)
    c0, r0 = jnp.floor(col).astype(jnp.int32), jnp.floor(row).astype(jnp.int32)
    c1, r1 = jnp.minimum(c0 + 1, w - 1), jnp.minimum(r0 + 1, h - 1)
    fc, fr = (col - c0)[:, None], (row - r0)[:, None]
    top = features[r0, c0] * (1 - fc) + features[r0, c1] * fc
    bottom = features[r1, c0] * (1 - fc) + features[r1, c1] * fc
    return top * (1 - fr) + bottom * fr


def transfer_normalized(features_a: jax.Array, features_b: jax.Array, points_b: jax.Array, image_size: int,
                        method: str = "nn", temperature: float = 0.04) -> jax.Array:
    """L2-normalised feature maps (h, w, D) of A and B, points of B (P, 2) xy normalised -> points in A (P, 2)."""
    if method not in METHODS:
        raise ValueError(f"zeroshot: method must be one of {METHODS}, got {method!r}")
    h, w, d = features_a.shape
    desc = sample_descriptors(features_b, points_b, image_size)
    desc = desc / jnp.maximum(jnp.linalg.norm(desc, axis=-1, keepdims=True), 1e-12)
    sim = jnp.einsum("pd,nd->pn", desc, features_a.reshape(h * w, d), precision="highest")  # (P, h·w)
    ys, xs = jnp.meshgrid(patch_centres(h, image_size), patch_centres(w, image_size), indexing="ij")
    centres = jnp.stack([xs.reshape(-1), ys.reshape(-1)], axis=-1)  # (h·w, 2) xy, row-major like the tokens
    if method == "nn":
        return centres[jnp.argmax(sim, axis=-1)]
    return jax.nn.softmax(sim / temperature, axis=-1) @ centres


class ZeroShotMatcher:
    """Predictor for `evaluation.dataset_driver.evaluate_dataset`: (image_a, image_b uint8) -> {'point_transfer': fn}.

    model, variables: a DinoV2 and its variables (`weights.load_dinov2`); image_size: S, a multiple of 14.
    """

    def __init__(self, model, variables, image_size: int = 224, method: str = "nn", temperature: float = 0.04):
        if image_size % dinov2_lib.PATCH_SIZE:
            raise ValueError(f"zeroshot: image_size must be a multiple of {dinov2_lib.PATCH_SIZE}, got {image_size}")
        if method not in METHODS:
            raise ValueError(f"zeroshot: method must be one of {METHODS}, got {method!r}")
        self.model, self.variables, self.image_size = model, variables, int(image_size)
        self.method, self.temperature = method, float(temperature)
        self._features = jax.jit(self._features_fn)
        self._transfer = jax.jit(functools.partial(transfer_normalized, image_size=self.image_size,
                                                   method=method, temperature=self.temperature))

    def _features_fn(self, images):
        out = self.model.apply(self.variables, images)["feature_map"]
        return out / jnp.maximum(jnp.linalg.norm(out, axis=-1, keepdims=True), 1e-12)

    def features(self, image: np.ndarray) -> jax.Array:
        """uint8 (H, W, 3) -> L2-normalised patch features (S/14, S/14, D)."""
        from macosnet_jax import predict
        return self._features(predict.preprocess(jnp.asarray(image), self.image_size)[None])[0]

    def __call__(self, image_a: np.ndarray, image_b: np.ndarray) -> dict:
        fa, fb = self.features(image_a), self.features(image_b)

        def point_transfer(points_b, size_a, size_b):
            normalized = geometry.pixels_to_normalized(np.asarray(points_b, np.float32), *size_b)
            moved = self._transfer(fa, fb, normalized)
            return np.asarray(geometry.normalized_to_pixels(moved, *size_a))

        return {"point_transfer": point_transfer}


def check_dataset(name):
    """Zero-shot transfer predicts points only: the benchmark must be scored by keypoints (not TSS's flow, which
    needs warps, nor the co-segmentation sets). UserError otherwise, before anything is loaded."""
    from macosnet_jax.evaluation.benchmarks import KEYPOINT_DATASETS, base_name
    if base_name(name) not in KEYPOINT_DATASETS:
        raise errors.UserError(f"--dataset {name}: zero-shot transfer predicts keypoints only; expected a "
                                    f"keypoint benchmark ({', '.join(KEYPOINT_DATASETS)})")


PROG = "python -m macosnet_jax.zeroshot"


def main(argv):
    """The command: errors a user can fix (a dataset that is not a keypoint benchmark or is not prepared, weights
    that do not fit) are one line with exit status 2; MACOSNET_VERBOSE=1 shows the traceback."""
    from macosnet_jax import weights
    try:
        _run(argv)
    except (errors.UserError, weights.WeightsMismatchError, FileNotFoundError) as e:
        if errors.verbose_requested():
            raise
        errors.report(PROG, errors.one_line(e))


def _run(argv):
    from absl import flags
    from macosnet_jax import weights
    from macosnet_jax.evaluation.dataset_driver import evaluate_dataset
    from macosnet_jax.evaluation.tables import write_tables
    f = flags.FLAGS
    if bool(f.weights) == bool(f.random_size):
        raise errors.UserError("give exactly one of --weights (an official DINOv2 .pth) or --random_size")
    check_dataset(f.dataset)
    if f.weights:
        model, variables = weights.load_dinov2(f.weights)
    else:
        model = dinov2_lib.dinov2(f.random_size, pos_grid=f.image_size // dinov2_lib.PATCH_SIZE)
        variables = jax.jit(model.init)(jax.random.key(f.seed),
                                        jnp.zeros((1, f.image_size, f.image_size, 3), jnp.float32))
    for method in f.method:
        matcher = ZeroShotMatcher(model, variables, f.image_size, method, f.temperature)
        tables = evaluate_dataset(f.dataset, matcher, split=f.split or None, data_dir=f.data_dir or None)
        note = (f"zero-shot DINOv2 ({f.weights or 'random ' + f.random_size}), {method}"
                f"{f' T={f.temperature:g}' if method == 'soft_argmax' else ''}, {f.image_size} px")
        for table in tables.values():
            table.notes.append(note)
            print(table.to_text() + "\n")
        if f.out_dir:
            write_tables(tables, f.out_dir, stem=f"results_{method}")


def run():
    from absl import app, flags
    flags.DEFINE_string("weights", "", "An official DINOv2 .pth (dinov2_vits14_pretrain.pth, ...).")
    flags.DEFINE_string("random_size", "", "Instead of --weights: a random ViT of this size (tiny, small, ...).")
    flags.DEFINE_string("dataset", "spair71k", "A keypoint benchmark builder: spair71k, pf_pascal, pf_willow.")
    flags.DEFINE_string("split", "", "tfds split (default: the benchmark's test split).")
    flags.DEFINE_string("data_dir", "", "tfds data dir where the dataset was prepared.")
    flags.DEFINE_integer("image_size", 224, "S: both images are resized to S×S (a multiple of 14).")
    flags.DEFINE_list("method", list(METHODS), "nn and/or soft_argmax.")
    flags.DEFINE_float("temperature", 0.04, "soft_argmax temperature on cosine similarities.")
    flags.DEFINE_integer("seed", 0, "Seed of the --random_size ViT.")
    flags.DEFINE_string("out_dir", "", "Where results_<method>.txt/.json go.")
    app.run(main)


if __name__ == "__main__":
    run()
