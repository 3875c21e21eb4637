"""Command line: `macosnet --config configs/x.py[:arg] --workdir DIR [--mode train|eval]`.

The same command runs on every host of a multi-host job (TPU VM, SLURM): with `--distributed` (or
MACOSNET_DISTRIBUTED=1) it first calls `jax.distributed.initialize()`, which detects TPU pods and SLURM by itself;
`--coordinator_address/--num_processes/--process_id` are for bare multi-process runs (launch/local_multiprocess.sh).
Training resumes from `--workdir` when it holds a checkpoint (the preemption-safe restart is: run the same command
again). Metrics go to `<workdir>/metrics.jsonl` and TensorBoard `<workdir>/tb` (process 0), a progress line with
steps/s and ETA to the log.

Exit status: 0 when done or preempted (SIGTERM: checkpoint written), 1 on a NaN/Inf loss (the last good checkpoint
is kept), on bad input (config, work dir, incompatible checkpoint) and when a peer process fails.
"""
from __future__ import annotations

import logging as py_logging
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file, e.g. configs/strong_synthetic.py:runlocal",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and the config of this run live.")
flags.DEFINE_enum("mode", "train", ["train", "eval"], "train (resumes if possible) or eval of the latest checkpoint.")
flags.DEFINE_bool("distributed", os.environ.get("MACOSNET_DISTRIBUTED", "") not in ("", "0"),
                  "Call jax.distributed.initialize() first (multi-host; default from MACOSNET_DISTRIBUTED).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (explicit multi-process runs only).")
flags.DEFINE_integer("num_processes", None, "Number of processes (explicit multi-process runs only).")
flags.DEFINE_integer("process_id", None, "This process's index (explicit multi-process runs only).")
flags.DEFINE_integer("initialization_timeout", 300, "Seconds to wait for all processes to join.")
flags.DEFINE_integer("heartbeat_timeout", 60, "Seconds without a heartbeat before a peer is declared dead.")


class _DropChattyInfo(py_logging.Filter):
    """Orbax logs every file it writes at INFO; keep its warnings and errors, drop the rest."""

    def filter(self, record):
        return record.levelno >= py_logging.WARNING or "/orbax/" not in record.pathname


def maybe_initialize_distributed() -> None:
    """jax.distributed.initialize() when asked to; must run before anything touches a device."""
    explicit = FLAGS.coordinator_address is not None
    if not (FLAGS.distributed or explicit):
        return
    import jax
    kwargs = dict(initialization_timeout=FLAGS.initialization_timeout,
                  heartbeat_timeout_seconds=FLAGS.heartbeat_timeout)
    if explicit:
        kwargs.update(coordinator_address=FLAGS.coordinator_address, num_processes=FLAGS.num_processes,
                      process_id=FLAGS.process_id)
    jax.distributed.initialize(**kwargs)
    logging.info("JAX distributed: process %d of %d, %d local / %d global devices.", jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count())


def run_eval(config, workdir: str):
    """Hook into macosnet_jax.evaluate: `evaluate_from_config(config, workdir)` scores the latest checkpoint."""
    from macosnet_jax import evaluate
    if not hasattr(evaluate, "evaluate_from_config"):
        raise app.UsageError("--mode eval needs macosnet_jax.evaluate.evaluate_from_config(config, workdir), "
                             "which this version does not have")
    return evaluate.evaluate_from_config(config, workdir)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.config is None or FLAGS.workdir is None:
        raise app.UsageError("--config and --workdir are required")
    for handler in py_logging.getLogger().handlers + py_logging.getLogger("absl").handlers:
        handler.addFilter(_DropChattyInfo())
    maybe_initialize_distributed()
    import jax

    from macosnet_jax import train
    multi = jax.process_count() > 1
    try:
        if FLAGS.mode == "eval":
            run_eval(FLAGS.config, FLAGS.workdir)
        else:
            train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except train.NonFiniteLossError as e:
        logging.error("%s", e)
        _exit(1, multi)
    except Exception as e:  # noqa: BLE001 - report which process failed, then make sure we do exit.
        if multi:
            logging.error("process %d of %d failed (a peer process may have died or lost contact): %s: %s",
                          jax.process_index(), jax.process_count(), type(e).__name__, e)
            _exit(1, multi)
        raise
    if multi:
        jax.distributed.shutdown()


def _exit(code: int, multi: bool) -> None:
    """Exits now. With peers, skip interpreter teardown: jax's atexit shutdown would wait for dead peers."""
    logging.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    if multi:
        os._exit(code)
    sys.exit(code)


def run():
    """Console-script entry point (`macosnet`)."""
    app.run(main)


if __name__ == "__main__":
    run()
