"""The optimizer of `config.optimizer`: one base optimizer, per-group learning rates (`optax.multi_transform`),
frozen groups (`optax.set_to_zero`), groups chosen by regular expressions on parameter paths, a step schedule."""
from __future__ import annotations

import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import traverse_util



def param_labels(params: Any, rules: Sequence[Sequence[str]], default: str = "default") -> Any:
    """Labels every parameter with the group of the first rule whose regex matches its path ('a/b/kernel').

    rules: [(regex, label), ...], searched with `re.search`. Unmatched parameters get `default`.
    """
    compiled = [(re.compile(rx), label) for rx, label in rules]

    def label(path, _):
        key = "/".join(str(p) for p in path)
        return next((lab for rx, lab in compiled if rx.search(key)), default)

    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict({k: label(k, v) for k, v in flat.items()})


def learning_rate_schedule(base_lr: float, boundaries: Sequence[int] = (),
                           multipliers: Sequence[float] = ()) -> optax.Schedule:
    """Piecewise constant: base_lr * [1, *multipliers][number of boundaries <= step].

    E.g. CNNGeo's Adam 1e-3 then 2e-4: base_lr=1e-3, boundaries=[steps of 50 epochs], multipliers=[0.2].
    """
    if len(boundaries) != len(multipliers):
        raise ValueError(f"optimizer.lr_boundaries ({list(boundaries)}) and optimizer.lr_multipliers "
                         f"({list(multipliers)}) must have the same length")
    values = jnp.asarray([1.0, *multipliers], jnp.float32) * base_lr
    bounds = jnp.asarray(list(boundaries), jnp.int32)
    return lambda step: values[jnp.searchsorted(bounds, step, side="right")]


def _base_optimizer(name: str, learning_rate: optax.Schedule, opt: ml_collections.ConfigDict):
    if name == "adam":
        return optax.adam(learning_rate, b1=opt.get("b1", 0.9), b2=opt.get("b2", 0.999), eps=opt.get("eps", 1e-8))
    if name == "adamw":
        return optax.adamw(learning_rate, weight_decay=opt.get("weight_decay", 1e-4))
    if name == "sgd":
        return optax.sgd(learning_rate, momentum=opt.get("momentum", 0.9) or None)
    raise ValueError(f"config.optimizer.name='{name}' is unknown; expected adam, adamw or sgd")


def make_optimizer(opt: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """Optimizer from `config.optimizer`.

    Fields: name (adam|adamw|sgd), learning_rate, lr_boundaries, lr_multipliers (shared schedule shape),
    param_groups [(regex, label)] (first match wins, unmatched -> 'default'), group_lr {label: learning rate},
    frozen_groups [label, ...] (updates set to zero, no optimizer state), grad_clip_norm (0 = off).
    """
    groups = dict(opt.get("group_lr", None) or {})
    frozen = set(opt.get("frozen_groups", ()) or ())
    rules = [tuple(r) for r in (opt.get("param_groups", ()) or ())]
    known = {lab for _, lab in rules} | {"default"}
    for label in set(groups) | frozen:
        if label not in known:
            raise ValueError(f"config.optimizer: group '{label}' has no rule in param_groups {rules}")
    boundaries, multipliers = opt.get("lr_boundaries", ()), opt.get("lr_multipliers", ())

    def group_tx(label):
        if label in frozen:
            return optax.set_to_zero()
        lr = groups.get(label, opt.learning_rate)
        return _base_optimizer(opt.name, learning_rate_schedule(lr, boundaries, multipliers), opt)

    def labels_checked(params):
        # A group with its own learning rate or frozen, whose rule matches nothing (a renamed module, a typo in
        # the regex), would silently train at the default rate: say so at optimizer init instead.
        tree = param_labels(params, rules)
        used = set(jax.tree_util.tree_leaves(tree))
        unused = sorted((set(groups) | frozen) - used)
        if unused:
            raise ValueError(f"config.optimizer: group(s) {unused} match no parameter (rules {rules}; parameter "
                             f"paths look like {next(iter(traverse_util.flatten_dict(params)), ())})")
        return tree

    labels = sorted(known)
    tx = optax.multi_transform({lab: group_tx(lab) for lab in labels}, labels_checked)
    if opt.get("grad_clip_norm", 0.0):
        tx = optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), tx)
    return tx
