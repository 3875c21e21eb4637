"""xla_cpu_flags.prefer_eigen_convolutions: with it, XLA CPU runs convolutions outside YNNPACK fusions; its modes
and refusals say what they did."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from macosnet_jax import xla_cpu_flags

# Counts the convolutions that the compiled HLO of a conv's forward and gradients runs inside YNNPACK fusions.
PROBE = textwrap.dedent("""
    import json, re, sys
    from macosnet_jax import xla_cpu_flags
    line = xla_cpu_flags.prefer_eigen_convolutions(sys.argv[1])
    import jax, jax.numpy as jnp
    conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    loss = lambda x, w: jnp.sum(conv(x, w) ** 2)
    x, w = jnp.ones((2, 16, 16, 32)), jnp.ones((3, 3, 32, 32))
    hlo = jax.jit(jax.value_and_grad(loss, (0, 1))).lower(x, w).compile().as_text()
    custom = set(re.findall(r"kind=kCustom, calls=%?([\\w.\\-]+)", hlo))  # YNNPACK fusions' computations
    bodies = re.split(r"\\n(?=%?[\\w.\\-]+ \\()", hlo)  # one piece per computation, its name first
    inside = sum(b.count(" convolution(") for b in bodies if b.split(" ", 1)[0].lstrip("%") in custom)
    print(json.dumps({"line": line, "convolutions": hlo.count(" convolution("), "in_ynn": inside,
                      "xla_flags": __import__("os").environ.get("XLA_FLAGS", "")}))
""")


def _probe(mode, xla_flags=""):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags)
    out = subprocess.run([sys.executable, "-c", PROBE, mode], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_convolutions_leave_ynnpack_fusions():
    off, on = _probe("off"), _probe("on")
    assert off["line"] == "XLA CPU convolutions: unchanged (off)"
    assert on["line"].startswith("XLA CPU convolutions: Eigen's, not YNNPACK's")
    assert off["convolutions"] >= 3 and on["convolutions"] >= 3, (off, on)  # forward, input and kernel gradients
    assert off["in_ynn"] >= 1, off  # XLA's default: convolutions inside YNNPACK fusions
    assert on["in_ynn"] == 0, on
    assert on["xla_flags"].endswith(xla_cpu_flags.FLAG)


def test_a_users_own_setting_is_kept():
    own = "--xla_cpu_experimental_ynn_fusion_type=+eltwise"
    result = _probe("on", xla_flags=own)
    assert "XLA_FLAGS sets" in result["line"] and result["xla_flags"] == own


def test_modes_and_refusals(monkeypatch):
    with pytest.raises(ValueError, match="one of"):
        xla_cpu_flags.prefer_eigen_convolutions("yes")
    assert xla_cpu_flags.prefer_eigen_convolutions("off") == "XLA CPU convolutions: unchanged (off)"
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    import jax
    jax.devices()  # this test process's backend has started
    assert "backend already started" in xla_cpu_flags.prefer_eigen_convolutions("on")
    assert "XLA_FLAGS" not in os.environ
    monkeypatch.setenv("JAX_PLATFORMS", "tpu")
    assert "unchanged (an accelerator" in xla_cpu_flags.prefer_eigen_convolutions("auto")
    monkeypatch.setenv("MACOSNET_XLA_CPU_CONV", " Off ")
    assert xla_cpu_flags.default_mode() == "off"
