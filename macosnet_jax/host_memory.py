"""Keeps freed host memory in the process so that XLA CPU reuses it instead of page-faulting it in again.

Why: XLA's CPU runtime allocates each execution's buffers with malloc and frees them when the execution ends. A
paper-scale training step (ResNet-101, 240 px) holds one temporary buffer of gigabytes (2.6 GB at batch 4); glibc
serves such a block with a fresh mmap and returns it with munmap, so every step touches all of it as new pages:
1.3 million page faults and 3.5 s of kernel time in a 10.8-s weak step at batch 8 (2-core CPU). Asking glibc to
keep freed memory (one malloc arena, no mmap for large blocks, no trimming of the heap) lets the next step reuse
the same pages: no page faults, the same step in 8.9 s (docs/measurements.md, benchmarks/bench_steps.py --host-malloc).

What it changes: three `mallopt` settings of the process (M_ARENA_MAX 1, M_MMAP_MAX 0, M_TRIM_THRESHOLD
unlimited), which take effect only for threads that have not allocated yet, so they must be set before JAX starts
its CPU backend (its thread pool). The process then keeps its peak heap until it exits, and every thread
allocates from one arena (on hosts with many input-pipeline threads that is one lock more; accelerator runs do not
need this, and `auto` leaves them alone).
"""
from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import os
import sys

# glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8

MODES = ("auto", "on", "off")


def default_mode() -> str:
    """The commands' default mode: $MACOSNET_HOST_MALLOC (auto, on or off), else 'auto'."""
    return os.environ.get("MACOSNET_HOST_MALLOC", "auto").strip().lower() or "auto"


def cpu_only() -> bool:
    """Whether JAX can only run on the CPU here: JAX_PLATFORMS is 'cpu', or it is unset and no GPU/TPU plugin is
    installed. Reads the environment and installed packages only (no backend is started)."""
    platforms = os.environ.get("JAX_PLATFORMS", "").strip().lower()
    if platforms:
        return platforms == "cpu"
    if any(importlib.util.find_spec(name) is not None for name in ("libtpu", "jax_cuda12_plugin",
                                                                   "jax_cuda13_plugin", "jax_rocm60_plugin")):
        return False
    return not list(importlib.metadata.entry_points(group="jax_plugins"))


def backend_started() -> bool:
    """Whether this process already runs a JAX backend (then new settings no longer reach its threads)."""
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge
        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):  # a JAX without this helper: assume not started
        return False


def keep_freed_memory(mode: str = "auto") -> str:
    """Sets glibc malloc to keep and reuse freed memory (module docstring); returns one line saying what it did.

    mode: 'on' (apply), 'off' (do nothing), 'auto' (apply when `cpu_only()`). Needs glibc (Linux); elsewhere, or
    once a JAX backend has started, it does nothing and says why. Call it first thing in an entry point.
    """
    if mode not in MODES:
        raise ValueError(f"host malloc mode must be one of {MODES}, got {mode!r}")
    if mode == "off":
        return "host malloc: unchanged (off)"
    if mode == "auto" and not cpu_only():
        return "host malloc: unchanged (an accelerator plugin or JAX_PLATFORMS other than cpu)"
    libc_version = os.confstr("CS_GNU_LIBC_VERSION") if hasattr(os, "confstr") and sys.platform == "linux" else None
    if not libc_version or not libc_version.startswith("glibc"):
        return "host malloc: unchanged (not glibc)"
    if backend_started():
        return "host malloc: unchanged (a JAX backend already started; call keep_freed_memory before it)"
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    # M_TRIM_THRESHOLD is a size_t inside glibc: -1 there is 'never trim'.
    results = [libc.mallopt(M_ARENA_MAX, 1), libc.mallopt(M_MMAP_MAX, 0), libc.mallopt(M_TRIM_THRESHOLD, -1)]
    if not all(results):
        return f"host malloc: mallopt refused a setting ({libc_version}: results {results})"
    return f"host malloc: freed memory is kept for reuse ({libc_version}: one arena, no mmap, no trim)"
