"""Where the experiment config files are, and which file a `--config` value names.

The configs live in the top-level `configs/` folder of a checkout, which installs as the package
`macosnet_configs` (pyproject.toml), so a wheel install carries them. A `--config` value is `PATH[:ARG]`; when no
file PATH exists, its file name is looked up among the installed configs, so from any directory
`configs/demo.py`, `macosnet_configs/demo.py`, `demo.py` and `demo` all name the installed `demo.py`. A path that
exists always wins (an edited copy of a config is used as given).
"""
from __future__ import annotations

import importlib.util
import os
import pathlib

PACKAGE = "macosnet_configs"
# Folder names under which a --config value may name an installed config.
_CONFIG_FOLDERS = ("", "configs", PACKAGE)
_NOT_CONFIGS = ("__init__", "macosnet_common")  # modules of the package that have no get_config


def config_dir() -> pathlib.Path:
    """The folder of the config files: the installed `macosnet_configs` package, or the `configs/` folder beside
    `macosnet_jax/` when the package is used from a checkout without being installed (PYTHONPATH=.)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        return pathlib.Path(next(iter(spec.submodule_search_locations)))
    return pathlib.Path(__file__).resolve().parents[1] / "configs"


def names() -> list[str]:
    """The installed configs (file names without .py), sorted: those that define get_config."""
    return sorted(p.stem for p in config_dir().glob("*.py") if p.stem not in _NOT_CONFIGS)


def config_path(name: str) -> pathlib.Path:
    """The file of the installed config `name` ('demo' or 'demo.py')."""
    return config_dir() / (name if name.endswith(".py") else name + ".py")


def resolve(value: str) -> str:
    """The `--config` value with PATH replaced by the installed config of that name when no file PATH exists and
    PATH is `NAME`, `NAME.py`, `configs/NAME.py` or `macosnet_configs/NAME.py`; otherwise `value` unchanged."""
    path, sep, arg = value.partition(":")
    if os.path.isfile(path):
        return value
    folder, name = os.path.split(os.path.normpath(path))
    if folder not in _CONFIG_FOLDERS or not name or name.removesuffix(".py") in _NOT_CONFIGS:
        return value
    candidate = config_path(name)
    return f"{candidate}{sep}{arg}" if candidate.is_file() else value


def resolve_argv(argv: list[str], flag: str = "config") -> list[str]:
    """argv with the value of every `--flag=V` / `--flag V` passed through `resolve` (see there)."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg.startswith(f"--{flag}="):
            out[i] = f"--{flag}=" + resolve(arg.split("=", 1)[1])
        elif arg == f"--{flag}" and i + 1 < len(out):
            out[i + 1] = resolve(out[i + 1])
    return out
