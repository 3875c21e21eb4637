"""host_memory.keep_freed_memory: with it, XLA CPU's large per-execution buffers are reused, not page-faulted in
again on every call; its modes and refusals say what they did."""
import os
import subprocess
import sys
import textwrap

import pytest

from macosnet_jax import host_memory

GLIBC = sys.platform == "linux" and (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")

# A jitted call whose output (64 MiB) is above glibc's largest mmap threshold (32 MiB): without the setting every
# call maps it afresh, i.e. 16384 new 4-KiB pages per call; with it most calls reuse the pages of a call before.
# The kept heap still grows now and then (a freed block that a later small allocation fenced off, or an output
# freed only after the next one was allocated: 3 to 7 growths in 1000 calls on a 2-core AMD EPYC, then none), so
# the probe counts the calls that page-faulted nothing rather than averaging the faults.
PROBE = textwrap.dedent("""
    import json, resource, sys
    from macosnet_jax import host_memory
    line = host_memory.keep_freed_memory(sys.argv[1])
    import jax, jax.numpy as jnp
    f = jax.jit(lambda x: jnp.sin(x) * 2.0)
    x = jnp.ones((4096, 4096), jnp.float32)
    for _ in range(10):
        jax.block_until_ready(f(x))
    faults = []
    for _ in range(40):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        y = f(x); jax.block_until_ready(y); del y
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(json.dumps({"line": line, "faults": faults}))
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
    assert min(off["faults"]) > 16000, off  # without it every call maps its output afresh
    fault_free = sum(count < 100 for count in on["faults"])
    assert fault_free >= len(on["faults"]) // 2, on  # with it most calls reuse pages already touched


def test_modes_and_refusals(monkeypatch):
    with pytest.raises(ValueError, match="one of"):
        host_memory.keep_freed_memory("yes")
    assert host_memory.keep_freed_memory("off") == "host malloc: unchanged (off)"
    monkeypatch.setenv("MACOSNET_HOST_MALLOC", " On ")
    assert host_memory.default_mode() == "on"
    monkeypatch.delenv("MACOSNET_HOST_MALLOC")
    assert host_memory.default_mode() == "auto"
    monkeypatch.setenv("JAX_PLATFORMS", "cuda")
    assert not host_memory.cpu_only()
    assert "accelerator" in host_memory.keep_freed_memory("auto")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    assert host_memory.cpu_only()
    import jax
    jax.devices()  # this test process has a backend: too late to change its threads' arenas
    assert "already started" in host_memory.keep_freed_memory("on")
