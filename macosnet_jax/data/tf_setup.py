"""TensorFlow for input only: imported on first use, kept off the accelerators, its threads bounded.

Why: the model runs in JAX; TensorFlow decodes and resizes images and runs the tf.data pipeline. Left alone it
would reserve GPU memory at its first op and start a thread per core, both of which starve XLA. Every module of
`data/` that needs TensorFlow gets it from `tensorflow()`, so the first user configures it, whichever it is, and
modules that need it only in one branch (`sources`) do not import it at all otherwise.
"""
from __future__ import annotations

import os


def configure_tensorflow(num_threads: int = 1):
    """Hides GPUs from TensorFlow and bounds its op thread pools (must run before TF executes anything)."""
    import tensorflow as tf

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TF already initialised its devices: too late, and harmless on CPU-only TF
        pass
    for setter in (tf.config.threading.set_intra_op_parallelism_threads,
                   tf.config.threading.set_inter_op_parallelism_threads):
        try:
            setter(num_threads)
        except RuntimeError:
            pass


_configured = False


def tensorflow():
    """The `tensorflow` module, configured by `configure_tensorflow()` the first time it is asked for."""
    global _configured
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    if not _configured:
        configure_tensorflow()
        _configured = True
    return tf


def default_num_threads() -> int:
    """Input threads: half the cores, at least 1, at most 8 (XLA keeps the rest)."""
    return max(1, min(8, (os.cpu_count() or 2) // 2))
