"""Training machinery on a tiny stand-in stage (tests/_train_worker.py): optimizer groups, data parallelism,
exact resumption after SIGKILL, SIGTERM preemption, the NaN guard, bad input."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import _train_worker as tw
from macosnet_jax import checkpoint as ckpt_lib
from macosnet_jax import train

WORKER = os.path.join(os.path.dirname(__file__), "_train_worker.py")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_inprocess(workdir, devices, **kw):
    config = tw.toy_config(**kw)
    state = train.train_and_evaluate(config, str(workdir), mesh=train.make_mesh(jax.devices()[:devices]))
    return tw.flat_params(state)


def _worker_env():
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)  # the worker sets its own device count
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return env


# -- config arg, optimizer -----------------------------------------------------------------------------------


def test_parse_config_arg_types_and_unknown_name():
    arg = train.parse_config_arg("runlocal,res=64,lr=0.5,name=x", runlocal=False, res=240, lr=1.0, name="")
    assert arg.runlocal is True and arg.res == 64 and arg.lr == 0.5 and arg.name == "x"
    assert train.parse_config_arg("", runlocal=False).runlocal is False
    with pytest.raises(ValueError, match="'bogus' is unknown"):
        train.parse_config_arg("bogus=1", runlocal=False)


def test_learning_rate_schedule_piecewise():
    sched = train.learning_rate_schedule(1e-3, [10, 20], [0.2, 0.01])
    got = [float(sched(s)) for s in (0, 9, 10, 19, 20, 100)]
    np.testing.assert_allclose(got, [1e-3, 1e-3, 2e-4, 2e-4, 1e-5, 1e-5], rtol=1e-6)
    with pytest.raises(ValueError, match="same length"):
        train.learning_rate_schedule(1e-3, [10], [])


def test_param_groups_learning_rates_and_frozen():
    """Adam's first update is -lr * g/(|g| + eps) = -lr * sign(g): each group's step size is its own lr."""
    params = {"encoder": {"w": jnp.ones((3,))}, "head": {"w": jnp.ones((3,))}, "decoder": {"w": jnp.ones((3,))}}
    grads = jax.tree.map(lambda x: jnp.array([1.0, -2.0, 3.0]), params)
    opt = ml_collections.ConfigDict(dict(
        name="adam", learning_rate=1e-3, param_groups=[("^encoder/", "enc"), ("^decoder/", "dec")],
        group_lr={"dec": 1e-2}, frozen_groups=["enc"]))
    tx = train.make_optimizer(opt)
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["encoder"]["w"], 0.0)
    np.testing.assert_allclose(updates["head"]["w"], [-1e-3, 1e-3, -1e-3], rtol=1e-4)
    np.testing.assert_allclose(updates["decoder"]["w"], [-1e-2, 1e-2, -1e-2], rtol=1e-4)
    assert train.param_labels(params, [("^encoder/", "enc")]) == {
        "encoder": {"w": "enc"}, "head": {"w": "default"}, "decoder": {"w": "default"}}


def test_optimizer_group_whose_rule_matches_nothing_is_an_error():
    opt = ml_collections.ConfigDict(dict(name="adam", learning_rate=1e-3, param_groups=[("^heads/", "heads")],
                                         group_lr={"heads": 1e-5}))
    params = {"encoder": {"kernel": jnp.zeros(2)}, "head": {"kernel": jnp.zeros(2)}}
    with pytest.raises(ValueError, match=r"\['heads'\] match no parameter"):
        train.make_optimizer(opt).init(params)


def test_optimizer_group_without_rule_is_an_error():
    opt = ml_collections.ConfigDict(dict(name="adam", learning_rate=1e-3, param_groups=[], group_lr={"dec": 1.0}))
    with pytest.raises(ValueError, match="group 'dec' has no rule"):
        train.make_optimizer(opt)


# -- data parallel -----------------------------------------------------------------------------------------


def test_global_batch_is_sharded_over_data_axis():
    mesh = train.make_mesh()
    batch = train.global_batch({"x": np.arange(8.0).reshape(8, 1)}, mesh)
    assert batch["x"].shape == (8, 1) and len(batch["x"].addressable_shards) == 4
    assert batch["x"].addressable_shards[1].data.shape == (2, 1)


def test_one_device_and_four_devices_agree(tmp_path):
    """Same steps on a 1-device and a 4-device mesh: same losses and parameters (rtol 1e-5, atol 1e-6: only
    the order of the cross-device reductions differs)."""
    one = _run_inprocess(tmp_path / "one", 1, steps=4, ckpt_every=4)
    four = _run_inprocess(tmp_path / "four", 4, steps=4, ckpt_every=4)
    assert int(one["step"]) == int(four["step"]) == 4
    for key in one:
        np.testing.assert_allclose(one[key], four[key], rtol=1e-5, atol=1e-6, err_msg=key)
    losses = [[json.loads(l)["loss"] for l in open(tmp_path / d / "metrics.jsonl")] for d in ("one", "four")]
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)
    assert losses[0][-1] < losses[0][0]  # it trains


def test_batch_not_divisible_by_devices_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="divisible by the number of devices"):
        _run_inprocess(tmp_path, 4, steps=1, batch=6)


# -- resumption -------------------------------------------------------------------------------------------


def test_sigkill_then_restart_equals_uninterrupted_run(tmp_path):
    """SIGKILL the training process at a random step, restart it with the same work dir: same final state."""
    steps, workdir = 8, tmp_path / "killed"
    reference = _run_inprocess(tmp_path / "ref", 2, steps=steps, ckpt_every=2)
    kill_after = random.Random().randint(3, 6)
    cmd = [sys.executable, WORKER, "--workdir", str(workdir), "--devices", "2", "--steps", str(steps),
           "--ckpt_every", "2"]
    proc = subprocess.Popen(cmd + ["--step_delay", "0.3"], env=_worker_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    metrics = workdir / "metrics.jsonl"
    deadline = time.time() + 60
    try:
        while time.time() < deadline and proc.poll() is None:
            if metrics.exists() and sum(1 for _ in open(metrics)) >= kill_after:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "worker ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    killed_at = sum(1 for _ in open(metrics))
    assert killed_at < steps
    done = subprocess.run(cmd, env=_worker_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = dict(np.load(workdir / "final_0_2.npz"))
    assert int(resumed["step"]) == steps
    # metrics.jsonl was cut back to the restored checkpoint: every step appears once, in order.
    assert [json.loads(line)["step"] for line in open(metrics)] == list(range(1, steps + 1))
    for key in reference:
        np.testing.assert_allclose(resumed[key], reference[key], rtol=1e-6, atol=1e-7, err_msg=key)


def test_sigterm_saves_and_exits_cleanly(tmp_path):
    cmd = [sys.executable, WORKER, "--workdir", str(tmp_path), "--devices", "1", "--steps", "50",
           "--ckpt_every", "100", "--step_delay", "0.2"]
    proc = subprocess.Popen(cmd, env=_worker_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics, deadline = tmp_path / "metrics.jsonl", time.time() + 60
    while time.time() < deadline and not (metrics.exists() and sum(1 for _ in open(metrics)) >= 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    assert "Preempted: checkpoint of step" in err
    final = dict(np.load(tmp_path / "final_0_1.npz"))
    ck = ckpt_lib.Checkpointer(ckpt_lib.checkpoint_dir(tmp_path))
    assert ck.latest_step() == int(final["step"]) < 50  # saved where it stopped, not at 100
    ck.close()


def test_sigterm_while_the_model_is_built_exits_zero_and_the_same_command_resumes(tmp_path):
    """The CLI watches for SIGTERM from its start: a notice before the first step is not a crash (-15)."""
    workdir = tmp_path / "run"
    cmd = [sys.executable, "-m", "macosnet_jax.main", f"--config={WORKER}:steps=3,ckpt_every=3,build_delay=20",
           f"--workdir={workdir}"]
    env = _worker_env()
    env["PYTHONPATH"] = os.path.dirname(WORKER) + os.pathsep + env["PYTHONPATH"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen, deadline = [], time.time() + 90
    for line in proc.stderr:  # the toy stage says when it starts building (then sleeps build_delay seconds)
        seen.append(line)
        if "toy: building the stage" in line or time.time() > deadline:
            break
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    err = "".join(seen) + err
    assert proc.returncode == 0, err[-3000:]
    assert "Preempted before step 1: nothing trained" in err, err[-3000:]
    again = subprocess.run([c.replace("build_delay=20", "build_delay=0") for c in cmd], env=env,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr[-3000:]
    assert [json.loads(line)["step"] for line in open(workdir / "metrics.jsonl")] == [1, 2, 3]


# -- NaN guard, bad input --------------------------------------------------------------------------------


def test_nan_guard_stops_and_keeps_last_good_checkpoint(tmp_path):
    with pytest.raises(train.NonFiniteLossError, match="step 4 .*Last good checkpoint: step 2"):
        _run_inprocess(tmp_path, 2, steps=8, ckpt_every=2, nan_at=3)  # the batch of step index 3 = step 4
    ck = ckpt_lib.Checkpointer(ckpt_lib.checkpoint_dir(tmp_path))
    assert ck.all_steps() == [2]
    stage = tw.build_toy_stage(tw.toy_config(nan_at=3))
    tx = train.make_optimizer(tw.toy_config().optimizer)
    mesh = train.make_mesh(jax.devices()[:2])
    abstract = ckpt_lib.with_sharding(jax.eval_shape(lambda r: train.create_train_state(stage, tx, r),
                                                     jax.random.key(0)), train.replicated(mesh))
    state, _, meta = ck.restore_latest(abstract)
    ck.close()
    assert meta["data_position"]["step"] == 2 and int(state.step) == 2
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state.params))


@pytest.mark.parametrize("poison", [0.0, 1.0])
def test_step_keeps_the_state_on_a_non_finite_step_and_updates_it_otherwise(poison):
    # Reference: the update computed outside the step (state.apply_gradients on jax.grad of the loss), and the
    # unchanged state for a poisoned batch (NaN loss): params, optimizer state, step count and BN statistics.
    config = tw.toy_config(nan_at=0)
    stage = tw.build_toy_stage(config)
    tx = train.make_optimizer(config.optimizer)
    mesh = train.make_mesh(jax.devices()[:1])
    state = jax.jit(lambda r: train.create_train_state(stage, tx, r))(jax.random.key(0))
    batch = dict(tw.toy_batch(0, 0, 0, 1, 8), poison=np.full((8,), poison, np.float32))
    grads, (batch_stats, _) = jax.grad(stage.loss_fn, has_aux=True)(state.params, state.batch_stats, state.frozen,
                                                                     batch, None)
    want = state.apply_gradients(grads=grads, batch_stats=batch_stats) if not poison else state
    want = jax.device_get(want)
    got, metrics = train.make_train_step(stage, mesh, seed=0)(jax.tree.map(jnp.copy, state),
                                                              train.global_batch(batch, mesh))
    assert float(metrics["finite"]) == (0.0 if poison else 1.0)
    for name in ("step", "params", "opt_state", "batch_stats"):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7, err_msg=name),
                     jax.device_get(getattr(got, name)), getattr(want, name))


def _scripted_validation(scores):
    """A validate(state) that returns scores[state.step - 1] and records the steps it was called at."""
    calls = []

    def validate(state):
        step = int(jax.device_get(state.step))
        calls.append(step)
        return scores[step - 1]
    return validate, calls


def _restore_step(directory):
    ck = ckpt_lib.Checkpointer(directory, async_save=False)
    try:
        return ck.all_steps()
    finally:
        ck.close()


def test_early_stop_keeps_best_state_and_does_not_resume_training(tmp_path):
    """SPEC §7.3: stop once validation falls more than early_stop_drop below the best; best/ holds the best step."""
    config = tw.toy_config(steps=8, ckpt_every=4)
    config.evaluation = dict(every_steps=1, early_stop_drop=0.2)
    validate, calls = _scripted_validation([0.1, 0.3, 0.25, 0.05, 0.9, 0.9, 0.9, 0.9])
    mesh = train.make_mesh(jax.devices()[:1])
    state = train.train_and_evaluate(config, str(tmp_path), mesh=mesh, validate=validate)
    assert calls == [1, 2, 3, 4] and int(state.step) == 4  # 0.05 < 0.3 - 0.2 at step 4
    record = json.loads((tmp_path / "validation.json").read_text())
    assert record["best_step"] == 2 and record["stopped_at"] == 4 and record["best_score"] == 0.3
    assert [s for s, _ in record["history"]] == [1, 2, 3, 4]
    assert _restore_step(train.best_checkpoint_dir(tmp_path)) == [2]
    assert 4 in _restore_step(ckpt_lib.checkpoint_dir(tmp_path))  # the stop step is saved too
    best = ckpt_lib.load_variables(train.best_checkpoint_dir(tmp_path), train.replicated(mesh))
    assert jax.tree.structure(best["params"]) == jax.tree.structure(jax.device_get(state.params))
    logged = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [m["validation"] for m in logged if "validation" in m] == [0.1, 0.3, 0.25, 0.05]
    # Running the command again does not train past the early stop.
    state = train.train_and_evaluate(config, str(tmp_path), mesh=mesh, validate=validate)
    assert calls == [1, 2, 3, 4] and int(state.step) == 4


def test_validation_without_drop_tracks_best_and_runs_to_the_end(tmp_path):
    config = tw.toy_config(steps=6, ckpt_every=3)
    config.evaluation = dict(every_steps=2, early_stop_drop=0.0)
    validate, calls = _scripted_validation([0.0, 0.5, 0.0, 0.1, 0.0, 0.7])
    state = train.train_and_evaluate(config, str(tmp_path), mesh=train.make_mesh(jax.devices()[:1]),
                                     validate=validate)
    assert calls == [2, 4, 6] and int(state.step) == 6
    record = json.loads((tmp_path / "validation.json").read_text())
    assert record["best_step"] == 6 and record["stopped_at"] is None
    # A record with no finite score yet (only NaN) reads back: nothing is best, nothing stops.
    (tmp_path / "nan").mkdir()
    nan_record = train.ValidationRecord(str(tmp_path / "nan"), drop=0.1)
    assert nan_record.add(1, float("nan")) == (False, False)
    nan_record.write()
    reread = train.ValidationRecord(str(tmp_path / "nan"), drop=0.1)
    assert reread.best_step is None and reread.best_score == -float("inf") and len(reread.history) == 1
    assert reread.add(2, 0.4) == (True, False)
    (tmp_path / "validation.json").write_text("{not json")
    with pytest.raises(ValueError, match="validation.json: unreadable"):
        train.train_and_evaluate(config, str(tmp_path), mesh=train.make_mesh(jax.devices()[:1]), validate=validate)


def test_unwritable_workdir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a dir")
    with pytest.raises(ValueError, match="is not a writable directory"):
        train.check_workdir(str(blocker / "sub"))


def test_concurrent_jobs_can_check_one_workdir(tmp_path):
    """Parallel jobs resuming one finished stage (e.g. ablation runs) all check its work dir at once."""
    import concurrent.futures
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: train.check_workdir(str(tmp_path)), range(400)))
    assert set(results) == {str(tmp_path)}
    assert not any(p.name.startswith(".write_probe") for p in tmp_path.iterdir())


def test_unknown_stage_is_a_clear_error():
    with pytest.raises(ValueError, match="not a registered stage"):
        train.build_stage(ml_collections.ConfigDict({"stage": "nope"}))
    with pytest.raises(ValueError, match="cannot import"):
        train.build_stage(ml_collections.ConfigDict({"stage": "no_such_module_xyz:build"}))


@pytest.fixture(scope="module")
def two_step_run(tmp_path_factory):
    """A finished 2-step toy run on one device: (workdir, flat parameters)."""
    workdir = tmp_path_factory.mktemp("two_steps")
    return workdir, _run_inprocess(workdir, 1, steps=2, ckpt_every=2)


def test_incompatible_checkpoint_is_a_clear_error_and_nothing_is_overwritten(two_step_run):
    tmp_path = two_step_run[0]
    before = sorted((p, os.path.getmtime(os.path.join(d, p))) for d, _, fs in os.walk(tmp_path / "checkpoints")
                    for p in fs)
    with pytest.raises(ckpt_lib.IncompatibleCheckpointError, match="'params/conv/kernel': checkpoint has shape"):
        _run_inprocess(tmp_path, 1, steps=4, ckpt_every=2, width=6)
    after = sorted((p, os.path.getmtime(os.path.join(d, p))) for d, _, fs in os.walk(tmp_path / "checkpoints")
                   for p in fs)
    assert before == after


def test_init_from_previous_stage_copies_matching_weights(two_step_run, tmp_path):
    previous, first = two_step_run
    config = tw.toy_config(steps=1)
    config.init_from = str(previous)
    stage = tw.build_toy_stage(config)
    mesh = train.make_mesh(jax.devices()[:1])
    state = train.initial_state(config, stage, train.make_optimizer(config.optimizer), mesh)
    got = tw.flat_params(state)
    for key in first:
        if key != "step":
            np.testing.assert_array_equal(got[key], first[key], err_msg=key)
    assert int(got["step"]) == 0  # weights only: a new stage starts at step 0 with a fresh optimizer
    config.init_from = str(tmp_path / "missing")
    with pytest.raises(ckpt_lib.CheckpointError, match="init_from"):
        train.initial_state(config, stage, train.make_optimizer(config.optimizer), mesh)


def test_init_prefix_nests_bare_trees_and_keeps_trees_already_in_layout(two_step_run):
    previous, first = two_step_run
    config = tw.toy_config(steps=1)
    config.init_from = str(previous)
    stage = tw.build_toy_stage(config)
    mesh = train.make_mesh(jax.devices()[:1])
    tx = train.make_optimizer(config.optimizer)
    top = sorted(train.initial_state(config, stage, tx, mesh).params)[0]
    # The checkpoint already has `top` at its root: merged as is, every weight copied.
    config.init_prefix = top
    got = tw.flat_params(train.initial_state(config, stage, tx, mesh))
    for key in first:
        if key != "step":
            np.testing.assert_array_equal(got[key], first[key], err_msg=key)
    # A prefix the checkpoint lacks nests the whole tree under it: nothing matches this model, a clear error.
    config.init_prefix = "matching"
    with pytest.raises(ckpt_lib.IncompatibleCheckpointError, match="no parameter path matches"):
        train.initial_state(config, stage, tx, mesh)


# -- the real strong stage (MatchingModel + grid_loss on synthetic warps) -------------------------------------


def _load_config(name, arg):
    import importlib.util
    path = os.path.join(REPO, "configs", name)
    spec = importlib.util.spec_from_file_location(name[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


@pytest.mark.slow
def test_real_strong_stage_one_device_equals_four_devices(tmp_path):
    """configs/strong_synthetic.py:runlocal (ResNet-18 to layer2, 64 px, synthetic warps), 2 steps, through the
    full loop on a 1-device and a 4-device mesh. SGD instead of Adam, so tiny gradients are not amplified to a
    full step: losses rtol 1e-4, parameters rtol 1e-4 / atol 1e-6."""
    results = {}
    for devices in (1, 4):
        config = _load_config("strong_synthetic.py", "runlocal")
        config.total_steps, config.data.num_images = 2, 8
        config.optimizer.name, config.optimizer.learning_rate = "sgd", 1e-2
        workdir = tmp_path / str(devices)
        state = train.train_and_evaluate(config, str(workdir), mesh=train.make_mesh(jax.devices()[:devices]))
        losses = [json.loads(l)["loss"] for l in open(workdir / "metrics.jsonl")]
        results[devices] = (losses, tw.flat_params(state))
    assert all(np.isfinite(results[1][0]))
    np.testing.assert_allclose(results[4][0], results[1][0], rtol=1e-4)
    for key, value in results[1][1].items():
        np.testing.assert_allclose(results[4][1][key], value, rtol=1e-4, atol=1e-6, err_msg=key)
    frozen = [k for k in results[1][1] if k.startswith("params/encoder/")]
    assert frozen  # the encoder is frozen in the strong stage: it must not move
    ref = _load_config("strong_synthetic.py", "runlocal")
    stage = train.build_stage(ref)
    init = tw.flat_params(train.create_train_state(stage, train.make_optimizer(ref.optimizer),
                                                   jax.random.key(ref.seed)))
    for key in frozen:
        np.testing.assert_array_equal(results[1][1][key], init[key], err_msg=key)


def test_init_torch_merges_converted_weights_under_prefix(monkeypatch):
    """The plumbing of config.init_torch (the conversion itself is macosnet_jax.weights' and tested there)."""
    from macosnet_jax import weights
    config = tw.toy_config(steps=1)
    stage = tw.build_toy_stage(config)
    mesh = train.make_mesh(jax.devices()[:1])
    tx = train.make_optimizer(config.optimizer)
    kernel = np.full((3, 3, 3, 4), 0.25, np.float32)
    calls = []

    def fake_load(path, layout, **kwargs):
        calls.append((path, layout))
        return {"params": {"kernel": kernel}, "batch_stats": {"mean": np.ones(4, np.float32)}}

    monkeypatch.setattr(weights, "load_torch_checkpoint", fake_load)
    config.init_torch.update(path="/w/x.pth", layout="torchvision_resnet", prefix="conv")
    state = train.initial_state(config, stage, tx, mesh)
    assert calls == [("/w/x.pth", "torchvision_resnet")]
    np.testing.assert_array_equal(state.params["conv"]["kernel"], kernel)
    config.init_torch.prefix = "nothing_here"
    with pytest.raises(ckpt_lib.IncompatibleCheckpointError, match="no parameter path matches"):
        train.initial_state(config, stage, tx, mesh)
