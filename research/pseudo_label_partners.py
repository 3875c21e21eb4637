"""How many partners does the 'pseudo_label' mask teacher need? Cell AUC of the labels vs ground truth (demo data).

    python research/pseudo_label_partners.py --init_from runs/demo/strong [--partners 1,2,4,8] [--anchors 48]

Why: the joint stage labels each image's cells by how well its partners' predicted maps match there
(`losses.matching_pseudo_labels`; in a triplet A has two partners, B one). Averaging over more partners of the same
category should lower the labels' noise; this script measures by how much, before anyone builds an input pipeline
with K partners per image. For each anchor training image and K partners of its category (strong-stage or joint
model, eval-mode BatchNorm) it prints, per K and threshold τ: the cell AUC of `losses.pseudo_label_scores`, the
fraction of object and of background cells labelled foreground (z > τ) and the cells' J against the ground truth.
Numbers are in docs/demo_objective.md ("Matching pseudo-labels").
"""
from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from macosnet_jax import demo, losses, stages, train
from macosnet_jax.data import synthetic


def _auc(scores: np.ndarray, labels: np.ndarray) -> float:
    pos, neg = scores[labels], scores[~labels]
    return float((pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean())


def partner_indices(categories: np.ndarray, anchors: np.ndarray, count: int) -> np.ndarray:
    """(len(anchors), count) indices of other images of each anchor's category (cycling if there are few)."""
    out = []
    for a in anchors:
        members = [i for i in np.flatnonzero(categories == categories[a]) if i != a]
        if not members:
            raise ValueError(f"image {a} is the only one of category {categories[a]}: no partner")
        start = int(np.searchsorted(members, a))
        out.append([members[(start + j) % len(members)] for j in range(count)])
    return np.asarray(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(demo.DEFAULT_CONFIG), help="demo-style config file[:arg]")
    parser.add_argument("--init_from", required=True, help="strong-stage or joint-stage work dir / checkpoints")
    parser.add_argument("--partners", default="1,2,4,8", help="numbers of partners to compare")
    parser.add_argument("--anchors", type=int, default=48)
    parser.add_argument("--thresholds", default="0.5,1.0")
    args = parser.parse_args(argv)
    counts = sorted(int(k) for k in args.partners.split(","))
    thresholds = [float(t) for t in args.thresholds.split(",")]

    path, _, config_arg = args.config.partition(":")
    config = demo.load_config(config_arg or None, path=path)
    joint = demo.stage_config(config, "joint")
    joint.init_from = args.init_from
    stage = train.build_stage(joint)
    state = train.initial_state(joint, stage, train.make_optimizer(joint.optimizer), train.make_mesh(jax.devices()[:1]))
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    d = config.data
    data = synthetic.make_synthetic_objects(d.num_images, config.image_size, d.seed, d.num_categories)
    anchors = np.arange(min(args.anchors, d.num_images))
    partners = partner_indices(np.asarray(data["category"]), anchors, counts[-1])
    images = stages.normalize(jnp.asarray(data["image"]))
    pair = jax.jit(lambda a, b: stage.model.apply(variables, a, b, train=False, method="pair"))

    maps = []  # per partner slot: (corr C_PA on the anchors' grid, θ_aff, θ_tps of T_PA), batched over anchors
    for j in range(counts[-1]):
        out = pair(images[anchors], images[partners[:, j]])
        maps.append((out["corr"]["ba"], out["theta_aff"]["ba"], out["theta_tps"]["ba"]))
    h, w = maps[0][0].shape[1:3]
    masks = jnp.asarray(data["mask"], jnp.float32)[anchors]
    objects = np.asarray(jax.vmap(lambda m: losses.average_pool_to(m, h, w))(masks)) > 0.5
    print(f"{len(anchors)} anchors, object = {objects.mean():.3f} of cells")
    print(f"{'K':>3s} {'AUC':>6s} {'tau':>5s} {'object fg':>10s} {'backgr. fg':>11s} {'cell J':>7s}")
    for k in counts:
        z = np.asarray(jax.vmap(losses.pseudo_label_scores)(maps[:k]))  # (anchors, h, w)
        auc = _auc(z.ravel(), objects.ravel())
        for tau in thresholds:
            fg = z > tau
            cell_j = np.mean((fg & objects).sum((1, 2)) / np.maximum((fg | objects).sum((1, 2)), 1))
            print(f"{k:3d} {auc:6.3f} {tau:5.2f} {fg[objects].mean():10.3f} {fg[~objects].mean():11.3f} {cell_j:7.3f}")


if __name__ == "__main__":
    main()
