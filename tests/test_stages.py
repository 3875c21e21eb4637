"""The training stages of stages.py on the CPU smoke configs: the weak stage trains, the joint objective assembles."""
import importlib.util
import json
import pathlib

import jax
import numpy as np
import pytest

from macosnet_jax import geometry, losses, stages, train

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


def load_config(name, arg):
    spec = importlib.util.spec_from_file_location(name, CONFIGS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def test_weak_stage_trains_on_its_loss(tmp_path):
    config = load_config("weak_pfpascal", "runlocal")
    config.total_steps = 2
    config.optimizer.learning_rate = 1e-3
    state = train.train_and_evaluate(config, str(tmp_path))
    assert int(state.step) == 2
    metrics = [line for line in (tmp_path / "metrics.jsonl").read_text().splitlines() if line]
    last = json.loads(metrics[-1])
    assert np.isfinite(last["loss"]) and last["score_aff"] > 0


def test_weak_loss_is_minus_the_weakalign_scores():
    config = load_config("weak_pfpascal", "runlocal")
    stage = stages.weak(config)
    variables = jax.jit(stage.init_fn)(jax.random.key(0))
    batch = next(stage.make_iterator(0, 0, 1))
    loss, (_, metrics) = stage.loss_fn(variables["params"], variables["batch_stats"], {}, batch, None)
    # Independent assembly from the model's outputs and losses.inlier_score.
    model = stage.model
    out = model.apply(variables, geometry.normalize_image(batch["image_a"]), geometry.normalize_image(batch["image_b"]),
                      train=True, mutable=["batch_stats"])[0]
    aff = [losses.inlier_score(c, a) for c, a in zip(out["corr_1"], out["theta_aff"])]
    comp = [losses.inlier_score(c, a, t) for c, a, t in zip(out["corr_1"], out["theta_aff"], out["theta_tps"])]
    np.testing.assert_allclose(float(loss), -np.mean(np.add(aff, comp)), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["score_aff"]), np.mean(aff), rtol=1e-5)


def test_joint_objective_pair_mode_skips_transitivity_and_is_finite():
    config = load_config("macosnet_pfpascal", "runlocal")
    config.losses.transitivity = 0.0
    stage = stages.joint(config)
    variables = jax.jit(stage.init_fn)(jax.random.key(0))
    batch = next(stage.make_iterator(0, 0, 1))
    assert "image_c" not in batch  # pairs only when no loss needs a third image
    loss, (_, terms) = jax.jit(stage.loss_fn)(variables["params"], variables["batch_stats"], variables["frozen"],
                                              batch, jax.random.key(1))
    assert set(terms) == {"matching", "cycle", "contrastive", "task"}
    assert np.isfinite(float(loss))


def test_unknown_perceptual_net_is_a_clear_error():
    config = load_config("macosnet_pfpascal", "runlocal")
    config.losses.perceptual_net = "vgg"
    with pytest.raises(ValueError, match="perceptual_net='vgg'"):
        stages.joint(config)
