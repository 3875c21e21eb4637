"""Orbax checkpoints: cross-topology restore, corrupt/half-written fallback, signatures, weight merging."""
import json
import logging
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import _train_worker as tw
from macosnet_jax import checkpoint as ckpt_lib
from macosnet_jax import train

WORKER = os.path.join(os.path.dirname(__file__), "_train_worker.py")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env():
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _train(workdir, devices=4, steps=4, ckpt_every=2):
    config = tw.toy_config(steps=steps, ckpt_every=ckpt_every)
    state = train.train_and_evaluate(config, str(workdir), mesh=train.make_mesh(jax.devices()[:devices]))
    return tw.flat_params(state)


def _abstract(devices):
    config = tw.toy_config()
    stage = tw.build_toy_stage(config)
    tx = train.make_optimizer(config.optimizer)
    mesh = train.make_mesh(jax.devices()[:devices])
    abstract = jax.eval_shape(lambda r: train.create_train_state(stage, tx, r), jax.random.key(0))
    return ckpt_lib.with_sharding(abstract, train.replicated(mesh))


@pytest.fixture(scope="module")
def saved_on_four(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("four")
    return workdir, _train(workdir, devices=4)


def test_save_on_four_devices_restore_on_one_and_two(saved_on_four):
    workdir, expected = saved_on_four
    for devices in (1, 2):
        out = subprocess.run([sys.executable, WORKER, "--workdir", str(workdir), "--devices", str(devices),
                              "--restore_only"], env=_env(), capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-3000:]
        got = dict(np.load(workdir / f"final_0_{devices}.npz"))
        for key in expected:
            np.testing.assert_array_equal(got[key], expected[key], err_msg=f"{devices} devices: {key}")


def test_restore_returns_state_class_config_and_data_position(saved_on_four):
    workdir, expected = saved_on_four
    ck = ckpt_lib.Checkpointer(ckpt_lib.checkpoint_dir(workdir))
    state, config, meta = ck.restore_latest(_abstract(1))
    ck.close()
    assert isinstance(state, train.TrainState) and int(state.step) == 4
    assert meta["data_position"] == {"step": 4, "seed": 0, "batch_size": 8, "process_count": 1}
    assert config["total_steps"] == 4 and config["optimizer"]["name"] == "adam"
    np.testing.assert_array_equal(np.asarray(state.params["head"]["kernel"]), expected["params/head/kernel"])


def _corrupt(step_dir):
    """Truncates every array data file of the step (a 'finalised but broken' checkpoint)."""
    n = 0
    for d, _, files in os.walk(step_dir / "state"):
        for f in files:
            path = os.path.join(d, f)
            if "/d/" in path + "/" or f == "manifest.ocdbt":
                open(path, "wb").close()
                n += 1
    assert n > 0


def test_corrupt_latest_falls_back_to_previous_with_warning(tmp_path, caplog):
    _train(tmp_path, devices=2, steps=4, ckpt_every=2)
    ckdir = tmp_path / "checkpoints"
    _corrupt(ckdir / "4")
    # A half-written save (a crash during an async write) must not be taken for a step either.
    (ckdir / "6.orbax-checkpoint-tmp-123").mkdir()
    ck = ckpt_lib.Checkpointer(str(ckdir))
    with caplog.at_level(logging.WARNING):
        state, _, meta = ck.restore_latest(_abstract(2))
    ck.close()
    assert meta["data_position"]["step"] == 2 and int(state.step) == 2
    assert any("unreadable" in r.getMessage() and "falling back" in r.getMessage() for r in caplog.records)
    assert not (ckdir / "4").exists() and len(os.listdir(str(ckdir) + ".corrupt")) == 1


def test_training_resumes_past_a_corrupt_checkpoint(tmp_path):
    """Restarting a run whose newest checkpoint is broken continues from the previous one and finishes."""
    _train(tmp_path, devices=1, steps=4, ckpt_every=2)
    _corrupt(tmp_path / "checkpoints" / "4")
    final = _train(tmp_path, devices=1, steps=6, ckpt_every=2)
    assert int(final["step"]) == 6
    ck = ckpt_lib.Checkpointer(ckpt_lib.checkpoint_dir(tmp_path))
    assert ck.all_steps()[-1] == 6
    ck.close()


def test_signature_and_mismatch_messages():
    a = {"params": {"w": jnp.zeros((2, 3))}, "step": jnp.zeros((), jnp.int32)}
    sig = ckpt_lib.state_signature(a)
    assert sig == {"params/w": [[2, 3], "float32"], "step": [[], "int32"]}
    assert ckpt_lib.signature_mismatch(sig, sig) is None
    other = ckpt_lib.state_signature({"params": {"w": jnp.zeros((2, 4)), "b": jnp.zeros(2)}})
    msg = ckpt_lib.signature_mismatch(sig, other)
    assert "'params/b' is in the model but not in the checkpoint" in msg
    assert "'params/w': checkpoint has shape (2, 3) float32, model expects (2, 4) float32" in msg
    assert "'step' is in the checkpoint but not in the model" in msg
    rebuilt = ckpt_lib.abstract_from_signature(sig, train.replicated(train.make_mesh()))
    assert rebuilt["params"]["w"].shape == (2, 3) and rebuilt["step"].dtype == np.int32


def test_merge_variables_copies_matching_paths_and_rejects_shape_clash():
    target = {"enc": {"w": jnp.zeros((2,))}, "dec": {"w": jnp.zeros((3,))}}
    merged, n = ckpt_lib.merge_variables(target, {"enc": {"w": jnp.ones((2,))}, "other": {"x": jnp.ones(1)}}, "t")
    assert n == 1
    np.testing.assert_array_equal(merged["enc"]["w"], [1, 1])
    np.testing.assert_array_equal(merged["dec"]["w"], [0, 0, 0])
    with pytest.raises(ckpt_lib.IncompatibleCheckpointError, match="'enc/w' has shape"):
        ckpt_lib.merge_variables(target, {"enc": {"w": jnp.ones((5,))}}, "t")


# -- one reader for every path ---------------------------------------------------------------------------------


def test_every_read_path_skips_a_corrupt_and_an_empty_newest_step(tmp_path, caplog):
    """load_variables (init_from, Matcher, predict, eval) takes the newest step that restores, like resume."""
    expected = _train(tmp_path, devices=1, steps=4, ckpt_every=2)  # steps 2 and 4
    ckdir = tmp_path / "checkpoints"
    reference = ckpt_lib.load_variables(str(tmp_path), train.replicated(train.make_mesh(jax.devices()[:1])))
    (ckdir / "6").mkdir()  # an empty step folder beside good ones
    _corrupt(ckdir / "4")
    with caplog.at_level(logging.WARNING):
        got = ckpt_lib.load_variables(str(tmp_path), train.replicated(train.make_mesh(jax.devices()[:1])))
    skipped = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(skipped) == 2 and "/6 is unreadable" in skipped[0] and "/4 is unreadable" in skipped[1]
    assert sorted(n.split("-")[0] for n in os.listdir(str(ckdir) + ".corrupt")) == ["4", "6"]
    assert not np.array_equal(np.asarray(got["params"]["head"]["kernel"]), expected["params/head/kernel"])
    assert np.asarray(reference["params"]["head"]["kernel"]).shape == expected["params/head/kernel"].shape


def test_no_readable_step_is_one_error_listing_the_steps_tried(tmp_path):
    _train(tmp_path, devices=1, steps=4, ckpt_every=2)
    for step in ("2", "4"):
        _corrupt(tmp_path / "checkpoints" / step)
    with pytest.raises(ckpt_lib.UnreadableCheckpointsError, match=r"could be read \(tried steps 4, 2, moved to"):
        ckpt_lib.load_variables(str(tmp_path), train.replicated(train.make_mesh(jax.devices()[:1])))


def test_training_refuses_to_start_over_when_every_checkpoint_is_unreadable(tmp_path):
    _train(tmp_path, devices=1, steps=4, ckpt_every=2)
    metrics = (tmp_path / "metrics.jsonl").read_text()
    for step in ("2", "4"):
        _corrupt(tmp_path / "checkpoints" / step)
    for _ in range(2):  # also on the next start, when the broken steps are already in checkpoints.corrupt/
        with pytest.raises(ckpt_lib.UnreadableCheckpointsError, match="tried steps 4, 2.*pass --start_over"):
            _train(tmp_path, devices=1, steps=4, ckpt_every=2)
        assert (tmp_path / "metrics.jsonl").read_text() == metrics
    config = tw.toy_config(steps=2, ckpt_every=2)
    state = train.train_and_evaluate(config, str(tmp_path), mesh=train.make_mesh(jax.devices()[:1]),
                                     start_over=True)
    assert int(state.step) == 2
    steps = [json.loads(line)["step"] for line in open(tmp_path / "metrics.jsonl")]
    assert steps == [1, 2]
