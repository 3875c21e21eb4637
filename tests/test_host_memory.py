"""host_memory.keep_freed_memory: with it, XLA CPU's large per-execution buffers are reused, not page-faulted in
again on every call; its modes and refusals say what they did."""
import os
import subprocess
import sys
import textwrap

import pytest

from macosnet_jax import host_memory

GLIBC = sys.platform == "linux" and (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")

# A jitted call whose output (64 MiB) is above glibc's largest mmap threshold (32 MiB): without the setting each
# call maps it afresh, i.e. 16384 new 4-KiB pages per call; with it the heap settles after a few calls.
PROBE = textwrap.dedent("""
    import json, resource, sys
    from macosnet_jax import host_memory
    line = host_memory.keep_freed_memory(sys.argv[1])
    import jax, jax.numpy as jnp
    f = jax.jit(lambda x: jnp.sin(x) * 2.0)
    x = jnp.ones((4096, 4096), jnp.float32)
    for _ in range(5):
        jax.block_until_ready(f(x))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(8):
        y = f(x); jax.block_until_ready(y); del y
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    print(json.dumps({"line": line, "faults_per_call": faults / 8}))
""")


def _probe(mode):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", PROBE, mode], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    import json
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_kept_memory_removes_the_page_faults_of_large_buffers():
    off, on = _probe("off"), _probe("on")
    assert off["line"] == "host malloc: unchanged (off)"
    assert on["line"].startswith("host malloc: freed memory is kept for reuse")
    assert off["faults_per_call"] > 16000, off  # the buffers really are mapped afresh without it
    assert on["faults_per_call"] < 0.1 * off["faults_per_call"], (on, off)


def test_modes_and_refusals(monkeypatch):
    with pytest.raises(ValueError, match="one of"):
        host_memory.keep_freed_memory("yes")
    assert host_memory.keep_freed_memory("off") == "host malloc: unchanged (off)"
    monkeypatch.setenv("JAX_PLATFORMS", "cuda")
    assert not host_memory.cpu_only()
    assert "accelerator" in host_memory.keep_freed_memory("auto")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    assert host_memory.cpu_only()
    import jax
    jax.devices()  # this test process has a backend: too late to change its threads' arenas
    assert "already started" in host_memory.keep_freed_memory("on")
