"""Errors a user can fix, as the command-line tools report them: one line, exit status 2, nothing left behind;
--verbose shows the traceback (macosnet_jax.errors, main.py, demo.py)."""
import os
import subprocess
import sys

import pytest

from macosnet_jax import errors

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = os.path.join(REPO, "tests", "_train_worker.py")


def _run(module, *args, env=None):
    environment = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", errors.VERBOSE_ENV)}
    environment.update(PYTHONPATH=REPO + os.pathsep + os.path.join(REPO, "tests"), **(env or {}))
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=300,
                          cwd=REPO, env=environment)


def _error_lines(result, prog):
    return [line for line in result.stderr.splitlines() if line.startswith(f"{prog}: error:")]


def test_one_line_prefers_the_did_you_mean_of_a_chain():
    try:
        try:
            raise KeyError("'learning_rat'\nDid you mean \"learning_rate\" instead of \"learning_rat\"?")
        except KeyError as inner:
            raise AttributeError("'learning_rat'") from inner
    except AttributeError as error:
        line = errors.one_line(error)
    assert "\n" not in line and 'Did you mean "learning_rate"' in line


@pytest.mark.parametrize("args, expected", [
    (["--config", f"{TOY}:steps=2", "--config.optimizer.learning_rat=1"],
     "--config.optimizer.learning_rat: the config has no key 'learning_rat' (Did you mean \"learning_rate\""),
    (["--config", "configs/absent.py:runlocal"], "--config configs/absent.py:runlocal: no such file"),
    (["--config", "configs/macosnet_tss.py:runlocal,image_size=big"],
     "config argument 'image_size' expects an integer, got 'big'"),
])
def test_macosnet_config_errors_are_one_line_and_leave_nothing(tmp_path, args, expected):
    workdir = tmp_path / "run"
    result = _run("macosnet_jax.main", *args, "--workdir", str(workdir))
    assert result.returncode == 2, result.stderr[-2000:]
    lines = _error_lines(result, "macosnet")
    assert len(lines) == 1 and expected in lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr and not workdir.exists()


def test_macosnet_dataset_not_built_names_builder_data_dir_and_command(tmp_path):
    workdir, data_dir = tmp_path / "run", tmp_path / "tfds"
    result = _run("macosnet_jax.main", "--config", f"configs/weak_pfpascal.py:data_dir={data_dir}",
                  "--workdir", str(workdir))
    assert result.returncode == 2, result.stderr[-2000:]
    lines = _error_lines(result, "macosnet")
    assert len(lines) == 1 and "'pf_pascal' is not prepared in " + str(data_dir) in lines[0]
    assert "python -m macosnet_datasets.build pf_pascal" in lines[0] and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == lines  # nothing else: no backend probes, TensorFlow notices
    assert not workdir.exists()  # no config.json, metrics.jsonl, tb/ or checkpoints/ left behind


def test_macosnet_bad_workdir_and_verbose_traceback(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    args = ["--config", f"{TOY}:steps=2", "--workdir", str(blocker / "run")]
    result = _run("macosnet_jax.main", *args)
    lines = _error_lines(result, "macosnet")
    assert result.returncode == 2 and len(lines) == 1 and "is not a writable directory" in lines[0]
    assert result.stderr.strip().splitlines() == lines
    verbose = _run("macosnet_jax.main", *args, env={errors.VERBOSE_ENV: "1"})
    assert verbose.returncode != 0 and "Traceback" in verbose.stderr and "is not a writable directory" in verbose.stderr


@pytest.mark.parametrize("arg, expected", [
    ("--config.strong.total_step=3", "no key 'total_step'"),
    # checked before any training: the stages it names come after the strong and joint ones
    ("--config.variants=matching_only,matching_alone", "config.variants: unknown joint-stage variant 'matching_alone'"),
])
def test_demo_config_errors_are_one_line(tmp_path, arg, expected):
    workdir = tmp_path / "demo"
    result = _run("macosnet_jax.demo", "--workdir", str(workdir), arg)
    lines = _error_lines(result, "macosnet-demo")
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    assert expected in lines[0] and not workdir.exists()
