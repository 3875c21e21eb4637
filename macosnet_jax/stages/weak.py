"""Weak stage (weakalign, SPEC §7.2): pairs of one category, L = -(score_aff + score_composed) on the stage-1
correlation, no ground truth."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from macosnet_jax import losses
from macosnet_jax.data.batches import PairBatch
from macosnet_jax.models.factory import matching_model
from macosnet_jax.models.matching import MatchingModel
from macosnet_jax.stage_api import Stage, register_stage
from macosnet_jax.stages.inputs import normalize, pair_iterator, pair_model_init, torch_loader


def weak_loss(model: MatchingModel, options: losses.LossOptions, params, batch_stats, batch: PairBatch):
    """weakalign's loss: the mean over pairs of -(affine inlier score + composed inlier score), fg weight 'none'.

    options: the inlier score's options (`LossOptions.score_kwargs`); the weights and fg options are not read.
    """
    score_kwargs = options.score_kwargs()
    outputs, mutated = model.apply({"params": params, "batch_stats": batch_stats}, normalize(batch["image_a"]),
                                   normalize(batch["image_b"]), train=True, mutable=["batch_stats"])
    score_aff = jax.vmap(lambda c, a: losses.inlier_score(c, a, **score_kwargs))(outputs["corr_1"], outputs["theta_aff"])
    score_comp = jax.vmap(lambda c, a, t: losses.inlier_score(c, a, t, **score_kwargs))(
        outputs["corr_1"], outputs["theta_aff"], outputs["theta_tps"])
    loss = -jnp.mean(score_aff + score_comp)
    return loss, (mutated["batch_stats"], {"score_aff": jnp.mean(score_aff), "score_comp": jnp.mean(score_comp)})


@register_stage("weak")
def weak(config: ml_collections.ConfigDict) -> Stage:
    """weakalign's weak stage: the two-stage matching model from pairs of one category, no ground truth."""
    model = matching_model(config)
    options = losses.LossOptions.from_config(config.get("losses", None))

    init_fn = pair_model_init(model, config.image_size)

    def loss_fn(params, batch_stats, frozen, batch, rng):
        del frozen, rng
        return weak_loss(model, options, params, batch_stats, batch)

    return Stage(init_fn=init_fn, loss_fn=loss_fn, make_iterator=pair_iterator(config, triplets=False),
                 model=model, name="weak", load_torch=torch_loader(config))
