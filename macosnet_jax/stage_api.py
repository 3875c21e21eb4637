"""The stage API: what a training stage gives the generic loop (`Stage`), and the registry of stages by name.

It sits below both the stages (macosnet_jax/stages/, which register themselves here) and the trainer (train.py,
which builds the stage a config names), so neither imports the other.
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable, Iterator, Mapping

import jax
import ml_collections
import numpy as np


LossFn = Callable[[Any, Any, Any, Mapping[str, Any], jax.Array], tuple[jax.Array, tuple[Any, dict]]]


@dataclasses.dataclass(frozen=True)
class Stage:
    """What a training stage provides to the generic loop.

    init_fn: rng -> {'params': ..., 'batch_stats': ... (may be {}), 'frozen': ... (may be {})}. Must be jittable.
    loss_fn: (params, batch_stats, frozen, batch, rng) -> (scalar loss, (new_batch_stats, metrics dict)), on the
      global batch (mean over examples). Gradients are taken w.r.t. params only; `frozen` holds fixed weights
      (e.g. the perceptual network) that are checkpointed but never optimized.
    make_iterator: (start_step, process_index, process_count) -> iterator of per-process numpy dict batches
      (leading axis = global_batch / process_count); batch k of the iterator is the batch of step start_step + k.
    model: the Flax module (for `TrainState.apply_fn`, prediction), optional.
    load_frozen: (params, batch_stats) of the initial state (after init_from / init_torch) -> the `frozen`
      variables, optional: e.g. the contrastive loss's perceptual network copied from the initial encoder or
      imported from torchvision weights. Runs once, at the start of a run (a resumed run restores them).
    load_torch: (path, layout) -> {'params', 'batch_stats'} of torch weights converted for this stage's model
      (`config.init_torch`), optional: the stage knows the model's sizes; without it the trainer converts with
      `weights.load_torch_checkpoint(path, layout)` alone.
    """
    init_fn: Callable[[jax.Array], dict]
    loss_fn: LossFn
    make_iterator: Callable[[int, int, int], Iterator[Mapping[str, np.ndarray]]]
    model: Any = None
    name: str = ""
    load_frozen: Callable[[Any, Any], dict] | None = None
    load_torch: Callable[[str, str], dict] | None = None


_STAGE_BUILDERS: dict[str, Callable[[ml_collections.ConfigDict], Stage]] = {}


def register_stage(name: str):
    """Decorator: `@register_stage('strong') def build(config) -> Stage`."""
    def decorator(builder):
        _STAGE_BUILDERS[name] = builder
        return builder
    return decorator


def build_stage(config: ml_collections.ConfigDict) -> Stage:
    """The stage named `config.stage`: a registered name, or 'package.module:function' (function(config) -> Stage).

    The module form lets a stage defined anywhere (the demo, tests) plug in without being imported here.
    """
    name = config.get("stage", None)
    if isinstance(name, str) and ":" in name:
        module_name, _, fn_name = name.partition(":")
        try:
            builder = getattr(importlib.import_module(module_name), fn_name)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"config.stage='{name}': cannot import {fn_name} from {module_name} ({e})") from e
        return builder(config)
    if name not in _STAGE_BUILDERS:
        importlib.import_module("macosnet_jax.stages")  # registers the built-in stages (models, losses, data)
    if name not in _STAGE_BUILDERS:
        raise ValueError(f"config.stage='{name}' is not a registered stage; known: {sorted(_STAGE_BUILDERS)} "
                         "or 'package.module:function'")
    return _STAGE_BUILDERS[name](config)
