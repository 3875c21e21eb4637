"""The experiment configs (ml_collections files, one per experiment; `get_config(arg)` in each).

This folder installs as the package `macosnet_configs`, so an installed `macosnet` / `macosnet-demo` finds them
(see macosnet_jax.config_files). The files are loaded by path (`--config configs/x.py:arg`), not imported.
"""
