"""Every experiment config loads (paper and `runlocal` variants) with the SPEC §7 values, and the CLI rejects bad
input with clear messages."""
import glob
import importlib.util
import os
import subprocess
import sys

import ml_collections
import pytest

from macosnet_jax import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALL_CONFIGS = sorted(f for f in glob.glob(os.path.join(REPO, "configs", "*.py"))
                     if os.path.basename(f) not in ("macosnet_common.py", "__init__.py"))
# The experiment configs of the training system; configs/demo.py is the lead's multi-stage demo config.
CONFIGS = [f for f in ALL_CONFIGS if os.path.basename(f) != "demo.py"]


def _load(path, arg=None) -> ml_collections.ConfigDict:
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=os.path.basename)
def test_every_config_file_loads(path):
    config = _load(path)
    assert isinstance(config, ml_collections.ConfigDict) and len(config) > 0


def test_there_are_configs_for_every_stage():
    names = {os.path.basename(f) for f in CONFIGS}
    assert {"strong_synthetic.py", "weak_pfpascal.py", "macosnet_pfpascal.py", "macosnet_tss.py",
            "macosnet_internet.py", "macosnet_spair.py"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
@pytest.mark.parametrize("arg", [None, "runlocal"])
def test_config_loads_and_has_trainer_keys(path, arg):
    config = _load(path, arg)
    for key in train.base_config():
        assert key in config, f"{path}: missing '{key}'"
    assert config.stage and config.total_steps > 0 and config.batch_size > 0
    train.make_optimizer(config.optimizer)  # groups and rules are consistent
    module_doc = open(path).read().split('"""')[1]
    assert "macosnet --config" in module_doc and "Expected" in module_doc, f"{path}: docstring launch/result"
    if arg == "runlocal":
        # The DINOv2 configs' smoke runs read the tfds builders' dummy data (their docstrings build it); the others
        # run on synthetic_objects.
        local_data = "tfds" if path.endswith("_dinov2.py") else "synthetic_objects"
        assert config.image_size <= 64 and config.total_steps <= 10 and config.data.name == local_data


def test_paper_values_of_spec_section_7():
    strong = _load(os.path.join(REPO, "configs", "strong_synthetic.py"))
    assert strong.batch_size == 32 and strong.optimizer.learning_rate == 1e-3
    sched = train.learning_rate_schedule(1e-3, strong.optimizer.lr_boundaries, strong.optimizer.lr_multipliers)
    assert float(sched(strong.total_steps - 1)) == pytest.approx(2e-4)
    assert strong.optimizer.lr_boundaries[0] * 2 == strong.total_steps  # 50 + 50 epochs
    assert strong.optimizer.frozen_groups == ["encoder"]
    weak = _load(os.path.join(REPO, "configs", "weak_pfpascal.py"))
    assert weak.batch_size == 16 and weak.optimizer.learning_rate == 5e-8 and weak.losses.fg_weight == "none"
    joint = _load(os.path.join(REPO, "configs", "macosnet_pfpascal.py"), "init_from=/runs/weak")
    assert joint.batch_size == 4 and joint.optimizer.learning_rate == 5e-8 and joint.init_from == "/runs/weak"
    assert joint.total_steps == 60 * round(2940 / 4) and "decoder" in joint.optimizer.group_lr


def test_unknown_config_argument_is_a_clear_error():
    with pytest.raises(ValueError, match="'bogus' is unknown"):
        _load(os.path.join(REPO, "configs", "strong_synthetic.py"), "runlocal,bogus=3")


def _cli(*args, timeout=120):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    return subprocess.run([sys.executable, "-m", "macosnet_jax.main", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_cli_rejects_unknown_config_key():
    out = _cli("--config=configs/strong_synthetic.py:runlocal", "--config.no_such_key=1", "--workdir=/tmp/x")
    assert out.returncode != 0 and "no_such_key" in out.stderr


def test_cli_rejects_unwritable_workdir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    out = _cli("--config=configs/strong_synthetic.py:runlocal", f"--workdir={blocker}/run")
    assert out.returncode != 0 and "is not a writable directory" in out.stderr
