"""The configs install as the package `macosnet_configs` (a wheel install carries them), every config loads from
the package's files, and `--config` names an installed config by path or by name."""
import importlib.util
import os
import pathlib
import subprocess
import sys
import tomllib

import ml_collections
import pytest

from macosnet_jax import config_files, demo

REPO = pathlib.Path(__file__).resolve().parents[1]
EXPECTED = {"demo", "strong_synthetic", "weak_pfpascal", "macosnet_pfpascal", "macosnet_tss", "macosnet_internet",
            "macosnet_spair", "macosnet_spair_dinov2", "macosnet_pfpascal_dinov2"}


def _package_dir() -> pathlib.Path:
    try:
        import macosnet_configs
    except ImportError as e:  # an install made before pyproject.toml listed the package
        pytest.fail(f"{e}: reinstall the project (python -m pip install -e . --no-deps)")
    return pathlib.Path(macosnet_configs.__file__).parent


def _load(path, arg=None) -> ml_collections.ConfigDict:
    spec = importlib.util.spec_from_file_location(pathlib.Path(path).stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def test_pyproject_installs_the_configs_folder_as_macosnet_configs():
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "macosnet_configs" in setuptools["packages"]
    assert setuptools["package-dir"]["macosnet_configs"] == "configs"


def test_pyproject_lists_every_sub_package():
    """The package list is explicit: a sub-package missing from it is missing from a wheel (its imports fail only
    after installing). Every folder with an __init__.py under macosnet_jax/ and datasets/ must be listed."""
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = set()
    for folder, name in (("macosnet_jax", "macosnet_jax"), ("datasets", "macosnet_datasets")):
        for init in (REPO / folder).rglob("__init__.py"):
            parts = init.parent.relative_to(REPO / folder).parts
            found.add(".".join((name,) + parts))
    assert "macosnet_jax.evaluation" in found
    assert found - set(setuptools["packages"]) == set()


def test_the_package_holds_every_config_and_the_lookup_uses_it():
    package = _package_dir()
    assert config_files.config_dir().resolve() == package.resolve()
    assert set(config_files.names()) == EXPECTED
    assert demo.DEFAULT_CONFIG.resolve() == (package / "demo.py").resolve()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_config_loads_from_the_package(name):
    path = _package_dir() / f"{name}.py"
    config = _load(path, "quick" if name == "demo" else "runlocal")
    assert isinstance(config, ml_collections.ConfigDict) and len(config) > 0


def test_config_values_name_installed_configs_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ here
    installed = str(config_files.config_path("demo"))
    for given in ("demo", "demo.py", "configs/demo.py", "macosnet_configs/demo.py", "./configs/demo.py"):
        assert config_files.resolve(given + ":quick") == installed + ":quick", given
    assert config_files.resolve("demo") == installed
    # Paths that exist win; other folders, unknown names and the helper module are left for the caller to reject.
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "demo.py").write_text("def get_config(arg=None): return None\n")
    assert config_files.resolve("configs/demo.py:quick") == "configs/demo.py:quick"
    for given in ("elsewhere/demo.py", "absent.py:runlocal", "macosnet_common", "__init__.py"):
        assert config_files.resolve(given) == given
    argv = ["prog", "--config=demo:quick", "--workdir", "w", "--config", "strong_synthetic.py:runlocal"]
    assert config_files.resolve_argv(argv) == ["prog", f"--config={installed}:quick", "--workdir", "w", "--config",
                                               str(config_files.config_path("strong_synthetic")) + ":runlocal"]


def test_macosnet_cli_accepts_a_config_name_outside_the_checkout(tmp_path):
    """`macosnet --config NAME:arg` from a directory without configs/: the config loads (the run then stops at
    the work dir, which is a file: exit status 2 with a one-line message about it, not about the config)."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS="0", TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run([sys.executable, "-m", "macosnet_jax.main", "--config", "strong_synthetic:runlocal",
                          f"--workdir={blocker}/run"], cwd=tmp_path, capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 2, out.stderr
    assert "no such file" not in out.stderr and "is not a writable directory" in out.stderr
