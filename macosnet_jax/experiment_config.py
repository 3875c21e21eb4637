"""What every experiment config uses: the `:arg` parser, the trainer's base keys, epochs -> steps.

Configs (configs/*.py) import this small module rather than the trainer, so loading a config pulls in no training
machinery.
"""
from __future__ import annotations

import ml_collections


def parse_config_arg(arg: str | None, **spec) -> ml_collections.ConfigDict:
    """Parses the `:arg` of `--config configs/x.py:arg` into a typed ConfigDict (big_vision style).

    `arg` is a comma-separated list of `name=value` or bare `name` (meaning True). `spec` gives the defaults and
    so the type of each accepted name, e.g. `parse_config_arg('runlocal,res=64', runlocal=False, res=240)`.
    An unknown name is an error naming the accepted ones.
    """
    out = ml_collections.ConfigDict(dict(spec))
    for item in filter(None, (s.strip() for s in (arg or "").split(","))):
        name, _, value = item.partition("=")
        if name not in spec:
            raise ValueError(f"config argument '{name}' is unknown; accepted: {sorted(spec)}")
        default = spec[name]
        if not _:
            parsed = True
        elif isinstance(default, bool):
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"config argument '{name}' expects true/false, got '{value}'")
            parsed = value.lower() in ("true", "1")
        elif isinstance(default, (int, float)):
            try:
                parsed = type(default)(value)
            except ValueError:
                kind = "an integer" if isinstance(default, int) else "a number"
                raise ValueError(f"config argument '{name}' expects {kind}, got '{value}'") from None
        else:
            parsed = value
        out[name] = parsed
    return out


def base_config() -> ml_collections.ConfigDict:
    """The trainer's keys with their defaults; every experiment config starts from it and overrides."""
    return ml_collections.ConfigDict(dict(
        stage="",                     # registered stage name or 'package.module:function'
        seed=0,
        total_steps=1000,
        batch_size=32,                # global, over all devices of all processes
        log_every_steps=50,
        checkpoint_every_steps=1000,
        keep_checkpoints=3,
        tensorboard=True,
        init_from="",                 # a previous stage's work dir (or checkpoints dir): weights that fit
        init_prefix="",               # where init_from's tree goes, e.g. 'matching': MatchingModel inside MaCoSNet
                                      # (a checkpoint that already has this top-level key is merged as is)
        init_torch=dict(path="", layout="", prefix=""),  # torch weights via macosnet_jax.weights, put under prefix
        optimizer=dict(name="adam", learning_rate=1e-3, lr_boundaries=[], lr_multipliers=[],
                       param_groups=[], group_lr={}, frozen_groups=[], grad_clip_norm=0.0),
    ))


def epochs_to_steps(epochs: float, num_examples: int, batch_size: int) -> int:
    """Steps of `epochs` passes over `num_examples` at global `batch_size` (at least 1)."""
    return max(1, int(round(epochs * num_examples / batch_size)))
