"""LossOptions and the term table of losses/objective.py: one home for the objective's options and defaults."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from macosnet_jax import losses
from test_losses import _fake_outputs

# The objective's defaults as `total_loss` took them (keyword names mapped to the config keys they come from).
PAPER_DEFAULTS = dict(fg_weight="mask", fg_weight_gradient="stop", inlier_kernel="bilinear",
                      offset_factor=227.0 / 210.0, tps_reg=0.2, cycle_grid=10, composed_consistency=True,
                      cycle_compat=False, task_stop_gradient=False, contrast_margin=1.0,
                      pseudo_label_threshold=0.5, pseudo_label_sharpness=10.0, pseudo_label_low=None,
                      pseudo_label_balanced=False, pseudo_label_self_weight=0.0)


def test_defaults_are_the_objectives():
    options = losses.LossOptions()
    assert dict(options.weights) == {"matching": 1.0, "cycle": 1.0, "transitivity": 1.0, "contrastive": 1.0,
                                     "task": 1.0} == losses.DEFAULT_WEIGHTS
    for name, value in PAPER_DEFAULTS.items():
        assert getattr(options, name) == value, name
    assert options.perceptual_net == "imagenet_resnet50" and options.perceptual_weights == ""
    # A config block sets only what it names; a λ it leaves out is 0 (that term is off).
    from_config = losses.LossOptions.from_config({"cycle": 0.5, "fg_weight": "none"})
    assert dict(from_config.weights) == {"cycle": 0.5} and from_config.weight("matching") == 0.0
    assert from_config.fg_weight == "none" and from_config.inlier_kernel == "bilinear"
    assert losses.LossOptions.from_config(None) == losses.LossOptions.from_config({}) == losses.LossOptions(weights={})


def test_every_config_key_of_the_shipped_configs_is_an_option():
    import ml_collections
    block = ml_collections.ConfigDict(dict(
        matching=1.0, cycle=0.3, transitivity=0.3, contrastive=0.1, task=1.0, fg_weight="mask",
        fg_weight_gradient="pseudo_label", pseudo_label_threshold=1.3, pseudo_label_low=0.5,
        pseudo_label_balanced=True, pseudo_label_self_weight=1.0, pseudo_label_sharpness=10.0,
        inlier_kernel="bilinear", cycle_grid=10, composed_consistency=True, task_stop_gradient=True,
        contrast_margin=0.1, perceptual_net="strong_encoder"))
    options = losses.LossOptions.from_config(block)
    assert options.pseudo_label_low == 0.5 and options.contrast_margin == 0.1 and options.weight("task") == 1.0
    assert hash(options) == hash(losses.LossOptions.from_config(block))  # usable as a static jit argument


def test_unknown_key_is_a_one_line_error_naming_it():
    with pytest.raises(ValueError, match=r"config\.losses\.cycle_grid_size is not a loss option") as info:
        losses.LossOptions.from_config({"matching": 1.0, "cycle_grid_size": 4})
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="'cylce' names no term"):
        losses.LossOptions(weights={"cylce": 1.0})
    with pytest.raises(ValueError, match="fg_weight_gradient"):
        losses.LossOptions(fg_weight_gradient="sideways")


def test_options_are_frozen():
    options = losses.LossOptions()
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.fg_weight = "none"
    with pytest.raises(TypeError):
        options.weights["cycle"] = 0.0


def test_term_table_sum_equals_the_objective_assembled_by_hand():
    """Σ λ·term over the table equals the weighted sum of the per-example losses, assembled independently."""
    rng = np.random.default_rng(4)
    outputs = _fake_outputs(rng)
    images = {k: jnp.asarray(rng.normal(size=(2, 16, 16, 3)).astype(np.float32)) for k in "ab"}
    w = jnp.asarray(rng.normal(size=(3, 5)).astype(np.float32))
    descriptor = lambda x: jnp.mean(jnp.tanh(x @ w), axis=(1, 2))  # noqa: E731
    options = losses.LossOptions.from_config(dict(matching=1.0, cycle=0.3, transitivity=0.3, contrastive=0.1,
                                                  task=2.0, fg_weight="maxcorr", cycle_grid=6,
                                                  contrast_margin=0.5))
    loss, terms = losses.total_loss(outputs, images=images, descriptor_fn=descriptor, options=options)
    assert list(terms) == ["matching", "cycle", "transitivity", "task", "contrastive"]

    a, t, c, lg = outputs["theta_aff"], outputs["theta_tps"], outputs["corr"], outputs["mask_logits"]
    expected = {}
    expected["matching"] = np.mean([losses.matching_loss(
        c["ab"][i], a["ab"][i], t["ab"][i], c["ba"][i], a["ba"][i], t["ba"][i],
        fg_weight_ab=losses.foreground_weight("maxcorr", c["ab"][i]),
        fg_weight_ba=losses.foreground_weight("maxcorr", c["ba"][i])) for i in range(2)])
    expected["cycle"] = np.mean([losses.cycle_loss(a["ab"][i], t["ab"][i], a["ba"][i], t["ba"][i], grid_size=6)
                                 for i in range(2)])
    expected["transitivity"] = np.mean([losses.transitivity_loss(
        a["ab"][i], t["ab"][i], a["bc"][i], t["bc"][i], a["ca"][i], t["ca"][i], grid_size=6) for i in range(2)])
    expected["task"] = np.mean([losses.task_loss(lg["a"][i], lg["b"][i], a["ab"][i], t["ab"][i], a["ba"][i],
                                                 t["ba"][i]) for i in range(2)])
    contrast = []
    for i in range(2):
        fg_a, bg_a = losses.masked_images(images["a"][i], jax.nn.sigmoid(lg["a"][i]))
        fg_b, bg_b = losses.masked_images(images["b"][i], jax.nn.sigmoid(lg["b"][i]))
        d = [descriptor(x[None])[0] for x in (fg_a, fg_b, bg_a, bg_b)]
        contrast.append(losses.contrastive_loss(*d, margin=0.5))
    expected["contrastive"] = np.mean(contrast)
    for name, value in expected.items():
        np.testing.assert_allclose(terms[name], value, rtol=2e-5, atol=1e-7, err_msg=name)
    lambdas = dict(matching=1.0, cycle=0.3, transitivity=0.3, contrastive=0.1, task=2.0)
    np.testing.assert_allclose(loss, sum(lambdas[n] * v for n, v in expected.items()), rtol=2e-5)
    # The table is the objective: one weighted term per entry whose λ is non-zero and which applies.
    inputs = losses.TermInputs(images, descriptor, {k: jax.nn.sigmoid(v) for k, v in lg.items()})
    by_table = sum(options.weight(term.weight) * term.compute(outputs, options, inputs)
                   for name, term in losses.TERMS.items() if options.weight(term.weight) and term.applies(options))
    np.testing.assert_allclose(loss, by_table, rtol=1e-6)


def test_weights_and_overrides_replace_the_options():
    outputs = _fake_outputs(np.random.default_rng(5), triplet=False)
    options = losses.LossOptions.from_config(dict(matching=1.0, cycle=1.0, fg_weight="none"))
    _, terms = losses.total_loss(outputs, {"cycle": 2.0}, options=options)
    assert set(terms) == {"cycle"}
    base, _ = losses.total_loss(outputs, options=options)
    mask, _ = losses.total_loss(outputs, options=options, fg_weight="mask")
    assert float(base) != float(mask)
    labelled = dataclasses.replace(options, fg_weight="mask", fg_weight_gradient="pseudo_label")
    _, terms = losses.total_loss(outputs, options=labelled)
    assert set(terms) == {"matching", "mask_label", "cycle"}  # mask_label is weighted by λ_match
