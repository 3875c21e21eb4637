"""Matcher: match two raw images with a trained model and transfer points between them (SPEC §1, §4, §8).

Usage:
    matcher = Matcher.from_checkpoint("weakalign_resnet101_affine_tps.pth.tar", layout="weakalign")
    result = matcher.match(image_a, image_b)     # uint8 (H, W, 3) arrays of any size
    points_a = matcher.transfer(points_b)        # (P, 2) xy 1-indexed pixels of B -> pixels of A

Each image is resized to S×S (corner-aligned bilinear, aspect ratio ignored) and ImageNet-normalised, exactly
as the reference's input pipeline. θ = (θ_aff, θ_tps) is the sampling map from B's frame to A's: a point p of B
lands at Aff(TPS(p)) in A. The network runs as one jitted forward at S×S; the resize is jitted per raw size.
The command-line tool lives in predict_cli.py.
"""
from __future__ import annotations

import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from macosnet_jax import geometry
from macosnet_jax.models import factory

LAYOUTS = ("weakalign", "cnngeo", "macosnet")


def _check_image(image, name) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"{name} must be an RGB image of shape (H, W, 3) (uint8, 0..255); got shape {image.shape}")
    if image.shape[0] < 2 or image.shape[1] < 2:
        raise ValueError(f"{name} must be at least 2x2 pixels; got shape {image.shape}")
    if not (image.dtype == np.uint8 or np.issubdtype(image.dtype, np.floating)):
        raise ValueError(f"{name} must be uint8 (or float in 0..255); got dtype {image.dtype}")
    return image


@functools.partial(jax.jit, static_argnums=(1,))
def preprocess(image, image_size: int):
    """Raw image (H, W, 3) in 0..255 -> normalised (S, S, 3): corner-aligned bilinear resize, /255, ImageNet."""
    return geometry.normalize_image(geometry.resize_bilinear(image, image_size, image_size))


@jax.jit
def _transfer(theta_aff, theta_tps, points_b, size_b, size_a):
    normalized = geometry.pixels_to_normalized(points_b, size_b[0], size_b[1])
    warped = geometry.composed_points(theta_aff, theta_tps, normalized)
    return geometry.normalized_to_pixels(warped, size_a[0], size_a[1])


class Matcher:
    """Wraps a matching model (MatchingModel, or a joint model that also returns 'mask_a'/'mask_b') and its variables.

    Args:
      model: a Flax module called as model.apply(variables, image_a, image_b, train=False) on (1, S, S, 3)
        normalised images, returning a dict with 'theta_aff' (1, 6) and 'theta_tps' (1, 18); a module with a
        `predict` method (MaCoSNet) is called through it instead, and also returns 'mask_a' / 'mask_b'.
      variables: its variables ({'params', 'batch_stats'}).
      image_size: S, the network input size.
    """

    def __init__(self, model, variables, image_size: int):
        self.model = model
        self.variables = variables
        self.image_size = int(image_size)
        model_size = getattr(model, "image_size", None) or getattr(getattr(model, "matching", None), "image_size",
                                                                   self.image_size)
        if model_size != self.image_size:
            raise ValueError(f"Matcher image_size={self.image_size} but the model was built for {model_size}")
        if hasattr(model, "predict"):  # the joint model: single-direction inference with both masks
            self._forward = jax.jit(functools.partial(model.apply, method="predict"))
        else:
            self._forward = jax.jit(functools.partial(model.apply, train=False))
        self._last = None  # (theta_aff, theta_tps, size_a, size_b) of the last match

    @classmethod
    def from_checkpoint(cls, path, layout: str | None = None, image_size: int | None = None,
                        precision: Any = "highest", step: int | None = None):
        """Builds a Matcher from a checkpoint.

        layout None: 'macosnet' when `path` is a directory (a work dir of ours), else 'weakalign'.
        layout 'weakalign' / 'cnngeo': a torch checkpoint file (architecture inferred from the names); image_size
          defaults to 240. precision: conv/matmul precision ('highest' keeps imported weights faithful on
          GPUs/TPUs; no cost on CPU).
        layout 'macosnet': a work dir of ours (or its checkpoints/ folder): the model is the one its config.json
          describes (config.stage 'strong_synthetic' / 'weak' -> MatchingModel, 'joint' -> MaCoSNet with masks),
          with params/batch_stats of checkpoint `step` (default: the newest that can be read). image_size, if
          given, must equal the config's. See `load_macosnet_run`.
        """
        if layout is None:
            layout = "macosnet" if os.path.isdir(os.fspath(path)) else "weakalign"
        if layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
        if layout == "macosnet":
            model, variables, config = load_macosnet_run(path, step=step)
            if image_size is not None and int(image_size) != int(config.image_size):
                raise ValueError(f"{os.fspath(path)}: image_size={image_size} was asked for, but the run was "
                                 f"trained at config.image_size={config.image_size}")
            return cls(model, variables, int(config.image_size))
        from macosnet_jax import weights  # the torch reader is only needed here
        image_size = 240 if image_size is None else int(image_size)
        model, variables = weights.convert_torch_checkpoint(path, layout, image_size=image_size, precision=precision)
        return cls(model, variables, image_size)

    def match(self, image_a, image_b) -> dict:
        """Matches raw images A, B (uint8 (H, W, 3), any sizes).

        Returns numpy arrays: theta_aff (6,), theta_tps (18,) (the map B -> A is Aff(TPS(p))), and 'mask_a' /
        'mask_b' as the model returns them at S×S (None when the model has no co-segmentation decoder).
        The result is remembered for `transfer`.
        """
        image_a = _check_image(image_a, "image_a")
        image_b = _check_image(image_b, "image_b")
        a = preprocess(jnp.asarray(image_a, jnp.float32), self.image_size)[None]
        b = preprocess(jnp.asarray(image_b, jnp.float32), self.image_size)[None]
        out = self._forward(self.variables, a, b)
        result = {
            "theta_aff": np.asarray(out["theta_aff"][0]),
            "theta_tps": np.asarray(out["theta_tps"][0]),
            "mask_a": np.asarray(out["mask_a"][0]) if out.get("mask_a") is not None else None,
            "mask_b": np.asarray(out["mask_b"][0]) if out.get("mask_b") is not None else None,
        }
        self._last = (result["theta_aff"], result["theta_tps"], image_a.shape[:2], image_b.shape[:2])
        return result

    def transfer(self, points_b) -> np.ndarray:
        """Maps (P, 2) xy 1-indexed pixel points of the last matched B to A's pixel frame (SPEC §8)."""
        if self._last is None:
            raise ValueError("Matcher.transfer: call match(image_a, image_b) first")
        points_b = np.asarray(points_b, np.float32)
        if points_b.ndim != 2 or points_b.shape[-1] != 2:
            raise ValueError(f"points_b must have shape (P, 2) with [..., 0] = x; got {points_b.shape}")
        theta_aff, theta_tps, size_a, size_b = self._last
        return np.asarray(_transfer(theta_aff, theta_tps, points_b, np.asarray(size_b, np.float32),
                                    np.asarray(size_a, np.float32)))


# --------------------------------------------------------------------------------------------------------------
# Our own runs (layout 'macosnet').

def run_directories(path) -> tuple[str, str]:
    """(work dir, checkpoints dir) of a run, given the work dir, its checkpoints/ or its best/ (train.py's
    best-validation state). Raises FileNotFoundError naming what is missing."""
    from macosnet_jax import checkpoint
    path = checkpoint.absolute(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: no such directory (expected the work dir of a macosnet_jax run, or its "
                                "checkpoints/ folder)")
    if os.path.isdir(checkpoint.checkpoint_dir(path)):
        return path, checkpoint.checkpoint_dir(path)
    if os.path.basename(os.path.normpath(path)) in ("checkpoints", "best"):  # best/: the best-validation state
        return os.path.dirname(os.path.normpath(path)), path
    raise FileNotFoundError(f"{path}: no checkpoint here (no checkpoints/ folder); train first, e.g. "
                            f"`macosnet --config configs/<experiment>.py --workdir {path}`")


def load_run_config(workdir):
    """The ml_collections ConfigDict of a run, read from `<workdir>/config.json` (written by train.py)."""
    import json

    import ml_collections
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing: a macosnet_jax work dir holds the config.json of its run "
                                "(train.train_and_evaluate writes it); without it the model cannot be rebuilt")
    try:
        with open(path) as f:
            config = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    for key in ("stage", "image_size", "model"):
        if key not in config:
            raise KeyError(f"{path}: no '{key}' key (has {sorted(config)}); is this a macosnet_jax run?")
    return ml_collections.ConfigDict(config)


def load_macosnet_run(path, step: int | None = None, sharding=None):
    """(model, {'params', 'batch_stats'}, config) of one of our runs: a work dir or its checkpoints/ folder.

    The model comes from `<workdir>/config.json`; the variables from checkpoint `step` (default: the newest),
    placed with `sharding` (default: the first local device). Raises FileNotFoundError when the folder, its
    config.json or any checkpoint is missing.
    """
    from macosnet_jax import checkpoint
    workdir, ckpt_dir = run_directories(path)
    config = load_run_config(workdir)
    model = factory.model_for_config(config, os.path.join(workdir, "config.json"))
    ckpt = checkpoint.Checkpointer(ckpt_dir, async_save=False)
    try:
        steps = ckpt.all_steps()
    finally:
        ckpt.close()
    if not steps:
        raise FileNotFoundError(f"{ckpt_dir}: no checkpoint in this folder (train first, or point at another run)")
    if step is not None and int(step) not in steps:
        raise FileNotFoundError(f"{ckpt_dir}: no checkpoint of step {step} (steps there: {steps})")
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    variables = checkpoint.load_variables(ckpt_dir, sharding, step=step)
    return model, {"params": variables["params"], "batch_stats": variables["batch_stats"]}, config
