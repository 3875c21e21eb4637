"""Has XLA CPU run convolutions with its Eigen kernels rather than YNNPACK's, where that is faster.

Why: jaxlib 0.10's CPU backend sends every convolution to YNNPACK (the default library fusion types include
'individual_convolution'). On the ResNet's shapes YNNPACK's kernel gradients run at a fraction of the matrix
product's rate (batch 8, 3x3 convs, 2-core Xeon: 37 GFLOP/s at 60x60x64, 58 at 30x30x128, 211 at 15x15x256), where
Eigen's reach 166 / 220 / 268 and PyTorch's 188 / 248 / 262. Without YNNPACK convolutions the ResNet-101
forward and backward at batch 8 (240 px) takes 2.05 s instead of 2.45 s and the forward 0.50 instead of 0.54 s;
matrix products and reductions stay with YNNPACK (docs/measurements.md, benchmarks/bench_vs_torch.py --xla-cpu-conv).

How: the flag `--xla_cpu_experimental_ynn_fusion_type=-individual_convolution` (remove that one type from
XLA's default list) appended to XLA_FLAGS, which XLA reads once, when JAX starts its CPU backend: call
`prefer_eigen_convolutions` first thing in an entry point, as `host_memory.keep_freed_memory`. A user's own
setting of that XLA flag is left alone. Values and gradients are the same up to float round-off.
"""
from __future__ import annotations

import os

from macosnet_jax.host_memory import backend_started, cpu_only

FLAG_NAME = "--xla_cpu_experimental_ynn_fusion_type"
FLAG = f"{FLAG_NAME}=-individual_convolution"
MODES = ("auto", "on", "off")


def default_mode() -> str:
    """The commands' default mode: $MACOSNET_XLA_CPU_CONV (auto, on or off), else 'auto'."""
    return os.environ.get("MACOSNET_XLA_CPU_CONV", "auto").strip().lower() or "auto"


def prefer_eigen_convolutions(mode: str = "auto") -> str:
    """Adds `FLAG` to XLA_FLAGS (module docstring); returns one line saying what it did.

    mode: 'on' (apply), 'off' (do nothing), 'auto' (apply when `host_memory.cpu_only()`). Does nothing, and says
    why, when XLA_FLAGS already sets the YNN fusion types or a JAX backend has started.
    """
    if mode not in MODES:
        raise ValueError(f"XLA CPU convolution mode must be one of {MODES}, got {mode!r}")
    if mode == "off":
        return "XLA CPU convolutions: unchanged (off)"
    if mode == "auto" and not cpu_only():
        return "XLA CPU convolutions: unchanged (an accelerator plugin or JAX_PLATFORMS other than cpu)"
    flags = os.environ.get("XLA_FLAGS", "")
    if FLAG_NAME in flags:
        return f"XLA CPU convolutions: unchanged (XLA_FLAGS sets {FLAG_NAME} already)"
    if backend_started():
        return "XLA CPU convolutions: unchanged (a JAX backend already started; call this before it)"
    os.environ["XLA_FLAGS"] = f"{flags} {FLAG}".strip()
    return f"XLA CPU convolutions: Eigen's, not YNNPACK's ({FLAG})"
