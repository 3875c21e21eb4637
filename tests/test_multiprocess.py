"""Multi-process data parallelism on one machine: two JAX processes with two CPU devices each, through the
real CLI (`python -m macosnet_jax.main`), coordinated by jax.distributed on 127.0.0.1. Every subprocess runs
under a timeout, so a hang fails the test instead of blocking the suite."""
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import _train_worker as tw
from macosnet_jax import checkpoint as ckpt_lib
from macosnet_jax import train

pytestmark = pytest.mark.multiprocess
TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening_hosts(port):
    """Hex local addresses of the sockets listening on `port` (Linux /proc/net/tcp and tcp6)."""
    hosts = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if os.path.exists(table):
            for row in open(table).read().splitlines()[1:]:
                local, state = row.split()[1], row.split()[3]
                host, hex_port = local.rsplit(":", 1)
                if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                    hosts.append(host)
    return hosts


LOOPBACK = ("0100007F", "0000000000000000FFFF00000100007F", "00000000000000000000000001000000")  # 127.0.0.1, ::1


def _launch(workdir, config_arg, num_processes=2, devices=2, port=None):
    port = port or _free_port()
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               PYTHONPATH=os.pathsep.join([TESTS, REPO, os.environ.get("PYTHONPATH", "")]))
    procs = []
    for i in range(num_processes):
        cmd = [sys.executable, "-m", "macosnet_jax.main", f"--config={TESTS}/_train_worker.py:{config_arg}",
               f"--workdir={workdir}", f"--coordinator_address=127.0.0.1:{port}",
               f"--num_processes={num_processes}", f"--process_id={i}", "--heartbeat_timeout=10",
               "--initialization_timeout=60"]
        procs.append(subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    return procs


def _finish(procs, timeout):
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=timeout))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail(f"process {procs.index(p)} still running after {timeout}s: hang")
    return outs


def _kill_and_wait_for_the_other(procs, killed):
    """SIGKILLs procs[killed] (two processes); returns the survivor's stderr and how long it took to exit. Every
    process is gone afterwards, whatever happened."""
    try:
        procs[killed].send_signal(signal.SIGKILL)
        killed_at = time.time()
        _, err = _finish(procs[1 - killed:2 - killed], timeout=60)[0]
        return err, time.time() - killed_at
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=30)


def test_two_processes_two_devices_each_equal_one_process_four_devices(tmp_path):
    procs = _launch(tmp_path / "mp", "steps=4,ckpt_every=4")
    outs = _finish(procs, timeout=240)
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    single = tw.flat_params(train.train_and_evaluate(tw.toy_config(steps=4, ckpt_every=4), str(tmp_path / "sp")))

    config = tw.toy_config()
    stage = tw.build_toy_stage(config)
    tx = train.make_optimizer(config.optimizer)
    abstract = ckpt_lib.with_sharding(jax.eval_shape(lambda r: train.create_train_state(stage, tx, r),
                                                     jax.random.key(0)), train.replicated(train.make_mesh()))
    ck = ckpt_lib.Checkpointer(ckpt_lib.checkpoint_dir(tmp_path / "mp"))
    state, _, meta = ck.restore_latest(abstract)
    ck.close()
    assert meta["data_position"]["process_count"] == 2
    multi = tw.flat_params(state)
    for key in single:  # same global batch and reductions over the same 4 devices: float32 rounding only
        np.testing.assert_allclose(multi[key], single[key], rtol=1e-5, atol=1e-6, err_msg=key)


def test_peer_death_makes_the_survivor_exit_nonzero_quickly(tmp_path):
    port = _free_port()
    procs = _launch(tmp_path, "steps=500,ckpt_every=1000,step_delay=0.2", port=port)
    metrics, deadline = tmp_path / "metrics.jsonl", time.time() + 180
    try:
        while time.time() < deadline and not (metrics.exists() and sum(1 for _ in open(metrics)) >= 2):
            assert all(p.poll() is None for p in procs), "a process ended before the kill"
            time.sleep(0.1)
        assert metrics.exists(), "training never started"
        # The coordinator listens on the address it was given (127.0.0.1), not on every interface.
        hosts = _listening_hosts(port)
        assert hosts and all(h in LOOPBACK for h in hosts), hosts
    finally:
        err, seconds = _kill_and_wait_for_the_other(procs, killed=1)
    assert seconds < 60 and procs[0].returncode not in (0, None)
    assert "process 0 of 2 failed" in err, err[-3000:]


def test_coordinator_death_at_startup_makes_the_peer_exit_nonzero_quickly(tmp_path):
    """Process 0 hosts JAX's coordination service; when it dies before training, the peer's JAX client aborts the
    process (SIGABRT, "Terminating process because the JAX distributed service detected fatal errors") within
    about a second: it cannot be turned into a Python exception, but it is prompt and nothing hangs."""
    procs = _launch(tmp_path, "steps=50,build_delay=30")
    try:
        deadline = time.time() + 120
        for line in procs[0].stderr:  # process 0 is building its model: the run has not started training
            if "toy: building the stage" in line or time.time() > deadline:
                break
    finally:
        err, seconds = _kill_and_wait_for_the_other(procs, killed=0)
    assert seconds < 60 and procs[1].returncode not in (0, None)
    assert "JAX distributed service detected fatal errors" in err, err[-3000:]


@pytest.mark.slow
def test_sigterm_to_one_process_checkpoints_all_at_the_same_step(tmp_path):
    """JAX's preemption service propagates one process's SIGTERM: both save at the same step and exit 0."""
    procs = _launch(tmp_path, "steps=500,ckpt_every=1000,step_delay=0.2")
    metrics, deadline = tmp_path / "metrics.jsonl", time.time() + 180
    while time.time() < deadline and not (metrics.exists() and sum(1 for _ in open(metrics)) >= 2):
        time.sleep(0.1)
    procs[1].send_signal(signal.SIGTERM)
    outs = _finish(procs, timeout=120)
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    steps = [int(err.split("Preempted: checkpoint of step ")[1].split()[0]) for _, err in outs]
    assert steps[0] == steps[1] < 500
    ck = ckpt_lib.Checkpointer(ckpt_lib.checkpoint_dir(tmp_path))
    assert ck.latest_step() == steps[0]
    ck.close()
