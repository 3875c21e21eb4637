"""Command line: `macosnet --config configs/x.py[:arg] --workdir DIR [--mode train|eval]`.

The same command runs on every host of a multi-host job (TPU VM, SLURM): with `--distributed` (or
MACOSNET_DISTRIBUTED=1) it first calls `jax.distributed.initialize()`, which detects TPU pods and SLURM by itself;
`--coordinator_address/--num_processes/--process_id` are for bare multi-process runs (launch/local_multiprocess.sh).
Training resumes from `--workdir` when it holds a checkpoint (the preemption-safe restart is: run the same command
again). Metrics go to `<workdir>/metrics.jsonl` and TensorBoard `<workdir>/tb` (process 0), a progress line with
steps/s and ETA to the log.

Exit status: 0 when done or preempted (SIGTERM: checkpoint written), 1 on a NaN/Inf loss (the last good checkpoint
is kept) and when a peer process fails, 2 on input a user can fix (a config file, key or value; the work dir; a
dataset that is not built; weights that do not fit): one line naming what is wrong, and nothing is left in a work
dir this command created. The inputs are checked before the model is built. `--verbose` (or MACOSNET_VERBOSE=1)
shows the traceback instead.
"""
from __future__ import annotations

import inspect
import logging as py_logging
import os
import shutil
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from macosnet_jax import config_files, errors, host_memory, preemption, xla_cpu_flags
from macosnet_jax.evaluation.validation import evaluation_settings, run_eval, validation_fn
from macosnet_jax.evaluation.validation import validation_score  # noqa: F401  (main.validation_score stays public)

PROG = "macosnet"

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file or installed config name[:arg], e.g. "
                                "configs/strong_synthetic.py:runlocal", lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and the config of this run live.")
flags.DEFINE_enum("mode", "train", ["train", "eval"], "train (resumes if possible) or eval of the latest checkpoint.")
flags.DEFINE_bool("verbose", False, "Show the traceback of errors a user can fix (also MACOSNET_VERBOSE=1).")
flags.DEFINE_bool("start_over", False, "Train from step 0 in a work dir whose checkpoints are all unreadable "
                  "(they are kept in checkpoints.corrupt/); without it such a work dir is an error.")
flags.DEFINE_bool("distributed", os.environ.get("MACOSNET_DISTRIBUTED", "") not in ("", "0"),
                  "Call jax.distributed.initialize() first (multi-host; default from MACOSNET_DISTRIBUTED).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (explicit multi-process runs only).")
flags.DEFINE_integer("num_processes", None, "Number of processes (explicit multi-process runs only).")
flags.DEFINE_integer("process_id", None, "This process's index (explicit multi-process runs only).")
flags.DEFINE_integer("initialization_timeout", 300, "Seconds to wait for all processes to join.")
flags.DEFINE_enum("host_malloc", host_memory.default_mode(), list(host_memory.MODES),
                  "Keep freed host memory for reuse (macosnet_jax.host_memory): XLA CPU's large per-step buffers are "
                  "then not page-faulted in afresh every step (a paper-scale CPU training step 1.2-1.6x faster). "
                  "auto: on when JAX can only use the CPU. Default: $MACOSNET_HOST_MALLOC, else auto.")
flags.DEFINE_enum("xla_cpu_conv", xla_cpu_flags.default_mode(), list(xla_cpu_flags.MODES),
                  "Run convolutions with XLA CPU's Eigen kernels, not YNNPACK's (macosnet_jax.xla_cpu_flags): their "
                  "gradients are several times faster on the ResNet's shapes (a paper-scale CPU training step "
                  "1.2x faster). auto: on when JAX can only use the CPU. Default: $MACOSNET_XLA_CPU_CONV, else auto.")
flags.DEFINE_integer("heartbeat_timeout", 60, "Seconds without a heartbeat before a peer is declared dead.")


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
        # The coordinator (process 0) listens on the address it is given, not on every interface (JAX's default).
        if "coordinator_bind_address" in inspect.signature(jax.distributed.initialize).parameters:
            kwargs["coordinator_bind_address"] = FLAGS.coordinator_address
    jax.distributed.initialize(**kwargs)
    logging.info("JAX distributed: process %d of %d, %d local / %d global devices.", jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count())


def check_inputs(config, workdir: str, mode: str) -> None:
    """Checks what can be checked before the model is built: the work dir is writable, the datasets the run reads
    are prepared, init_from / init_torch exist, and for --mode eval the work dir holds a run. Raises a UserError
    (or FileNotFoundError) naming what is wrong."""
    from macosnet_jax import predict, train
    from macosnet_jax.evaluation.benchmarks import TFDS_DATASETS, base_name
    from macosnet_jax.evaluation.tfds_data import check_prepared
    data = config.get("data", None) or {}
    datasets = []
    if mode == "train":
        train.check_workdir(workdir)
        if data.get("name", None) == "tfds":
            datasets.append((data.get("tfds_name", None), data.get("data_dir", None) or None))
        init_from = config.get("init_from", "")
        if init_from and "://" not in init_from and not os.path.isdir(init_from):
            raise errors.UserError(f"config.init_from={init_from}: no such directory (expected the work dir of a "
                                   "previous stage, or its checkpoints/ folder)")
        torch_path = (config.get("init_torch", None) or {}).get("path", "")
        if torch_path and "://" not in torch_path and not os.path.isfile(torch_path):
            raise errors.UserError(f"config.init_torch.path={torch_path}: no such file")
    if mode == "eval" or int((config.get("evaluation", None) or {}).get("every_steps", 0) or 0):
        settings = evaluation_settings(config)
        datasets.append((settings["dataset"], settings["data_dir"]))
    if mode == "eval":
        predict.run_directories(workdir)
    for name, data_dir in datasets:
        if name and base_name(name) in TFDS_DATASETS:
            check_prepared(name, data_dir)


def _user_errors() -> tuple:
    from macosnet_jax import checkpoint, weights
    return (errors.UserError, checkpoint.CheckpointError, weights.WeightsMismatchError, FileNotFoundError,
            app.UsageError)


class _DropProbeNoise(py_logging.Filter):
    """Drops log lines that say nothing to a user: JAX probing for absent backends (TPU, GPU plugins) and tfds
    noting, while it looks for a dataset, a folder without dataset_info.json (the error that follows says it)."""

    _NOISE = ("Unable to initialize backend", "has no dataset_info.json")

    def filter(self, record):
        return not any(text in record.getMessage() for text in self._NOISE)


def main(argv):
    # Both before anything starts JAX's backend.
    setup_lines = (host_memory.keep_freed_memory(FLAGS.host_malloc),
                   xla_cpu_flags.prefer_eigen_convolutions(FLAGS.xla_cpu_conv))
    logging.get_absl_handler().addFilter(_DropProbeNoise())
    # TensorFlow (tf.data only) prints a oneDNN notice at import whatever its log level; its input ops do not use
    # oneDNN, so the custom ops are switched off rather than the notice filtered. Both stay overridable.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.config is None or FLAGS.workdir is None:
        raise app.UsageError("--config and --workdir are required")
    if FLAGS.mode == "train" and not (FLAGS.distributed or FLAGS.coordinator_address):
        preemption.watch()  # before the slow part: a SIGTERM while building or compiling exits 0, resumable
    from macosnet_jax import train
    train.quiet_checkpoint_logging()
    maybe_initialize_distributed()
    import jax

    multi = jax.process_count() > 1
    workdir_existed = "://" in FLAGS.workdir or os.path.exists(FLAGS.workdir)
    try:
        check_inputs(FLAGS.config, FLAGS.workdir, FLAGS.mode)
        for line in setup_lines:  # after the input checks: a user error stays the only line printed
            logging.info("%s", line)
        if FLAGS.mode == "eval":
            run_eval(FLAGS.config, FLAGS.workdir)
        else:
            train.train_and_evaluate(FLAGS.config, FLAGS.workdir, validate=validation_fn(FLAGS.config),
                                     start_over=FLAGS.start_over)
    except train.NonFiniteLossError as e:
        logging.error("%s", e)
        _exit(1, multi)
    except _user_errors() as e:
        if not workdir_existed and jax.process_index() == 0:
            shutil.rmtree(FLAGS.workdir, ignore_errors=True)  # leave nothing behind
        if FLAGS.verbose or errors.verbose_requested([]):
            raise
        if multi:
            logging.error("process %d of %d: %s", jax.process_index(), jax.process_count(), errors.one_line(e))
            _exit(errors.EXIT_USER_ERROR, multi)
        errors.report(PROG, errors.one_line(e))
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
    """Console-script entry point (`macosnet`). `--config` takes a path or the name of an installed config."""
    sys.argv = config_files.resolve_argv(sys.argv)
    app.run(main, flags_parser=errors.absl_flags_parser(PROG))


if __name__ == "__main__":
    run()
