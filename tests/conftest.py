"""Test-session setup: 4 virtual CPU devices (set before JAX starts) and fixture paths.

The multi-device tests (data parallel over a 'data' mesh axis) need several devices; on CPU they are
virtual devices of one host, which must be requested before the first JAX import anywhere.
"""
import os
import pathlib

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # keep TensorFlow (and tests) off any GPU
# The commands that tests run in this process leave its malloc as it is (tests/test_host_memory.py checks the setting).
os.environ.setdefault("MACOSNET_HOST_MALLOC", "off")
# ... and the commands they start keep XLA's default convolutions (tests/test_xla_cpu_flags.py checks the setting).
os.environ.setdefault("MACOSNET_XLA_CPU_CONV", "off")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "reference"


@pytest.fixture(scope="session")
def fixtures_dir() -> pathlib.Path:
    return FIXTURES


def load_fixture(name: str) -> dict:
    """Loads `tests/fixtures/reference/<name>.npz` as a dict of numpy arrays."""
    with np.load(FIXTURES / f"{name}.npz") as data:
        return {k: data[k] for k in data.files}
