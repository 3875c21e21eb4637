"""What each joint-stage loss term tells the co-segmentation masks, measured against ground truth (demo data).

    python research/mask_signals.py --init_from runs/demo/strong            # fresh decoder on the strong stage
    python research/mask_signals.py --init_from runs/demo/joint             # a trained joint model
    python research/mask_signals.py --init_from runs/demo/joint --set losses.contrast_margin=0.1

Why: the losses of SPEC §6 never see a ground-truth mask, so whether the masks can learn the object depends on
whether the objective *prefers* it. On one batch of training triplets of the demo config (synthetic_objects, which
has ground-truth masks) the script prints:

1. The loss landscape over constructed masks: every term evaluated with the model's own θ and correlations but the
   mask logits replaced by ±5 on the ground truth ('gt'), everywhere ('all_fg', 'all_bg'), reversed ('inverse')
   and 0 ('half'). If 'gt' is not the lowest total, training cannot be expected to find the object.
2. The per-term gradient on the model's mask logits: the push −∂L/∂logit summed over object and background pixels
   and the AUC of that push as a per-pixel object detector (0.5: no information; > 0.5: it raises the object
   above the background). The frozen network F is the config's (for the demo: the strong encoder at init_from,
   or --perceptual_from).
3. The pseudo-label scores z of image A ('pseudo_label' mask signal: partners B and C, plus the mask's own logits
   when the config's pseudo_label_self_weight is set) against the ground truth per cell: AUC, the fraction of
   object / background cells above the threshold and their J, and, for confident labels, what the band leaves.
Numbers from this script are in docs/demo_objective.md ("Why the masks do not find the object").
"""
from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from macosnet_jax import demo, losses, stages, train
from macosnet_jax.models import factory
from macosnet_jax.models.resnet import global_pool_features

CONSTRUCTED = {"gt": (5.0, -5.0), "all_fg": (5.0, 5.0), "all_bg": (-5.0, -5.0), "inverse": (-5.0, 5.0),
               "half": (0.0, 0.0)}


def _set(config, assignment):
    import ast
    key, _, text = assignment.partition("=")
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text
    node = config
    parts = key.split(".")
    for part in parts[:-1]:
        node = node[part]
    node[parts[-1]] = value


def _auc(scores: np.ndarray, labels: np.ndarray, samples: int = 4000) -> float:
    """P(score of a random object pixel > score of a random background pixel), on a fixed subsample."""
    rng = np.random.default_rng(0)
    pos = rng.choice(scores[labels], samples)
    neg = rng.choice(scores[~labels], samples)
    return float((pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(demo.DEFAULT_CONFIG), help="demo-style config file[:arg]")
    parser.add_argument("--init_from", required=True, help="strong-stage or joint-stage work dir / checkpoints")
    parser.add_argument("--perceptual_from", default="",
                        help="strong-stage run whose encoder is F (default: --init_from's encoder)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--set", action="append", default=[], help="config override key=value (joint stage)")
    args = parser.parse_args(argv)

    path, _, config_arg = args.config.partition(":")
    config = demo.stage_config(demo.load_config(config_arg or None, path=path), "joint")
    config.batch_size = args.batch
    config.init_from = args.init_from
    for assignment in args.set:
        _set(config, assignment)
    stage = train.build_stage(config)
    mesh = train.make_mesh(jax.devices()[:1])
    tx = train.make_optimizer(config.optimizer)
    state = train.initial_state(config, stage, tx, mesh)
    if args.perceptual_from:
        other = config.copy_and_resolve_references()
        other.init_from = args.perceptual_from
        state = state.replace(frozen=train.initial_state(other, stage, tx, mesh).frozen)
    batch = next(iter(stage.make_iterator(0, 0, 1)))
    if "mask_a" not in batch:
        raise SystemExit(f"config.data.name={config.data.name!r} gives no ground-truth masks; use synthetic_objects")

    images = {k: stages.normalize(jnp.asarray(batch["image_" + k])) for k in "abc"}
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    outputs, _ = stage.model.apply(variables, images["a"], images["b"], images["c"], train=True, method="triplet",
                                   mutable=["batch_stats"])
    perceptual = factory.perceptual_network(config)

    def descriptor_fn(x):
        return global_pool_features(perceptual.apply(state.frozen, x, train=False)["features"])

    options = losses.LossOptions.from_config(config.losses)
    weights = {name: options.weight(name) for name in losses.WEIGHT_NAMES}
    gt = {k: jnp.asarray(batch["mask_" + k], jnp.float32) for k in "ab"}
    print(f"batch of {args.batch} triplets, object fraction {float(gt['a'].mean()):.3f}; losses {dict(config.losses)}")

    print("\n1. loss at constructed masks (logits ±5)")
    columns = [t for t in losses.WEIGHT_NAMES if weights[t]]
    if weights["matching"] and options.fg_weight_gradient == "pseudo_label":
        columns.append("mask_label")  # part of the matching term (λ_match), shown on its own
    print(f"{'masks':8s} {'total':>8s} " + " ".join(f"{t:>12s}" for t in columns))
    for name, (fg, bg) in CONSTRUCTED.items():
        constructed = dict(outputs, mask_logits={k: fg * gt[k] + bg * (1 - gt[k]) for k in "ab"})
        total, terms = losses.total_loss(constructed, weights, images=images, descriptor_fn=descriptor_fn,
                                         options=options)
        print(f"{name:8s} {float(total):8.4f} " + " ".join(f"{float(terms[t]):12.4f}" for t in columns))

    print("\n2. push −∂L/∂logit on the model's masks (image A), per term")
    probs = np.asarray(jax.nn.sigmoid(outputs["mask_logits"]["a"]))
    object_a = np.asarray(gt["a"]) > 0.5
    print(f"model masks: mean p on object {probs[object_a].mean():.3f}, on background {probs[~object_a].mean():.3f}, "
          f"AUC {_auc(probs.ravel(), object_a.ravel()):.3f}")
    print(f"{'term':12s} {'push on object':>15s} {'push on backgr.':>15s} {'AUC':>6s}")
    for term in losses.WEIGHT_NAMES:
        if not weights[term]:
            continue

        def one_term(logits, term=term):
            return losses.total_loss(dict(outputs, mask_logits=logits), {term: 1.0}, images=images,
                                     descriptor_fn=descriptor_fn, options=options)[0]
        push = -np.asarray(jax.grad(one_term)(outputs["mask_logits"])["a"])
        if not np.any(push):
            print(f"{term:12s} {'(no gradient to the masks)':>31s}")
            continue
        print(f"{term:12s} {push[object_a].sum():+15.3e} {push[~object_a].sum():+15.3e} "
              f"{_auc(push.ravel(), object_a.ravel()):6.3f}")

    print("\n3. matching pseudo-labels of image A (partners B and C) per 12x12 cell")
    h = outputs["corr"]["ab"].shape[1]
    object_cells = np.asarray(jax.vmap(lambda m: losses.average_pool_to(m, h, h))(gt["a"])) > 0.5
    c, th_aff, th_tps = outputs["corr"], outputs["theta_aff"], outputs["theta_tps"]
    partners = [[(c["ba"][i], th_aff["ba"][i], th_tps["ba"][i]), (c["ca"][i], th_aff["ca"][i], th_tps["ca"][i])]
                for i in range(args.batch)]
    own = {"own_weight": options.pseudo_label_self_weight}
    z = np.stack([np.asarray(losses.pseudo_label_scores(p, own_logits=outputs["mask_logits"]["a"][i], **own))
                  for i, p in enumerate(partners)])  # the labels total_loss uses (same z), per image A
    high, low = options.pseudo_label_threshold, options.pseudo_label_low
    fg = z > high
    print(f"object cells {object_cells.mean():.3f}; AUC of z {_auc(z.ravel(), object_cells.ravel()):.3f}; "
          f"z > {high}: {fg[object_cells].mean():.3f} of object cells, {fg[~object_cells].mean():.3f} of background "
          f"cells; cell J {np.mean((fg & object_cells).sum((1, 2)) / np.maximum((fg | object_cells).sum((1, 2)), 1)):.3f}")
    if low is not None:  # confident labels: what the ignore band leaves
        labelled = fg | (z < low)
        print(f"confident labels (z > {high} foreground, z < {low} background): labelled {labelled[object_cells].mean():.3f}"
              f" of object cells ({fg[object_cells].sum() / max(labelled[object_cells].sum(), 1):.3f} of them "
              f"foreground), {labelled[~object_cells].mean():.3f} of background cells "
              f"({fg[~object_cells].sum() / max(labelled[~object_cells].sum(), 1):.3f} of them foreground)")

if __name__ == "__main__":
    main()
