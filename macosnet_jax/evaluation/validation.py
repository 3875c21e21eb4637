"""What `macosnet` evaluates with: the evaluation settings of a config, the validation score that drives early
stopping (SPEC §7.3), `validation_fn` (the trainer's `validate`), and `run_eval` (`--mode eval` of a work dir).

`macosnet_jax.main` re-exports these names. Heavy imports (JAX, the model, the data) happen inside the functions,
so that importing main stays cheap (its preemption watch starts before the slow part).
"""
from __future__ import annotations

import os

from absl import app, logging

from macosnet_jax.evaluation.benchmarks import resolve_split


def evaluation_settings(config) -> dict:
    """What `--mode eval` scores: {'dataset', 'split', 'data_dir', 'options'} from config.evaluation.

    config.evaluation.dataset / split / data_dir (data_dir falls back to config.data.data_dir). Without
    config.evaluation: the held-out synthetic_objects pairs when the run trained on synthetic_objects, else the
    'test' split of config.data.tfds_name. synthetic_objects reads num_images / num_pairs / seed from
    config.evaluation (defaults 48 / 50 / 1000 + config.seed: instances the run never saw) and its categories and
    image size from the run.
    """
    evaluation = config.get("evaluation", None) or {}
    data = config.get("data", None) or {}
    dataset = evaluation.get("dataset", None)
    if not dataset:
        if data.get("name", None) == "synthetic_objects":
            dataset = "synthetic_objects"
        elif data.get("name", None) == "tfds" and data.get("tfds_name", None):
            dataset = data.get("tfds_name")
        else:
            raise app.UsageError("--mode eval: the config names no dataset to evaluate on; set "
                                 "config.evaluation.dataset (e.g. --config.evaluation.dataset=pf_pascal)")
    options = {}
    if dataset == "synthetic_objects":
        options = dict(image_size=int(config.image_size), num_images=int(evaluation.get("num_images", 48)),
                       num_pairs=int(evaluation.get("num_pairs", 50)),
                       seed=int(evaluation.get("seed", 1000 + int(config.get("seed", 0)))),
                       num_categories=int(evaluation.get("num_categories", None) or data.get("num_categories", None)
                                          or 6))
    return {"dataset": dataset, "split": evaluation.get("split", None) or None,
            "data_dir": evaluation.get("data_dir", None) or data.get("data_dir", None) or None, "options": options}


# Default validation score per table (the first table of evaluate_dataset's result that has one is used).
_DEFAULT_SCORE_COLUMNS = ("PCK@0.1", "flip_back", "J")


def validation_score(tables: dict, metric: str = "") -> float:
    """One number from evaluate_dataset's tables: `metric` = 'table/column' of the summary row (e.g.
    'img224/PCK@0.1'), or by default the first table's PCK@0.1 (TSS: flip_back flow PCK; Internet: J)."""
    if metric:
        name, _, column = metric.partition("/")
        table = tables.get(name)
        if table is None or column not in table.columns:
            available = [f"{n}/{c}" for n, t in tables.items() for c in t.columns]
            raise ValueError(f"config.evaluation.metric={metric!r} is not in the evaluation tables; choose one of "
                             f"{available}")
        return float(table.rows[table.summary_rows[0]][column])
    for table in tables.values():
        for column in _DEFAULT_SCORE_COLUMNS:
            if column in table.columns:
                return float(table.rows[table.summary_rows[0]][column])
    raise ValueError(f"no default validation score in tables {list(tables)}; set config.evaluation.metric")


def validation_fn(config):
    """(state) -> validation score for early stopping (SPEC §7.3), or None when config.evaluation.every_steps is
    0 or absent. Scores config.evaluation's dataset and split (see `evaluation_settings`) with the state's weights;
    which number: config.evaluation.metric (see `validation_score`)."""
    evaluation = config.get("evaluation", None) or {}
    if not int(evaluation.get("every_steps", 0) or 0):
        return None
    import jax
    from macosnet_jax import predict
    from macosnet_jax.evaluation.dataset_driver import evaluate_dataset
    from macosnet_jax.models import factory
    settings = evaluation_settings(config)
    split = resolve_split(settings["dataset"], settings["split"])
    model = factory.model_for_config(config)
    metric = evaluation.get("metric", "") or ""
    matcher = None  # built once: its jitted forward takes the variables as an argument, so it compiles once

    def validate(state):
        nonlocal matcher
        # One local copy of the replicated weights per validation (works when the state spans several processes),
        # placed on this process's first device so the per-pair calls do not copy them again.
        variables = jax.device_put(jax.tree.map(lambda x: x.addressable_data(0),
                                                {"params": state.params, "batch_stats": state.batch_stats}),
                                   jax.local_devices()[0])
        if matcher is None:
            matcher = predict.Matcher(model, variables, int(config.image_size))
        matcher.variables = variables
        tables = evaluate_dataset(settings["dataset"], matcher.match, split=split, data_dir=settings["data_dir"],
                                  **settings["options"])
        return validation_score(tables, metric)
    return validate


def run_eval(config, workdir: str):
    """Scores `workdir` on config.evaluation's dataset (its best-validation state when it has best/, else its newest
    checkpoint); tables go to <workdir>/eval/.

    The model is rebuilt from <workdir>/config.json (the run's own config), the data settings come from --config.
    Writes <workdir>/eval/<dataset>_<split>.txt and .json (plus TSS .flo files and predicted masks) and prints
    the tables. Returns {table name: ResultTable}.
    """
    import jax
    from macosnet_jax import predict
    from macosnet_jax.evaluation.dataset_driver import evaluate_dataset
    from macosnet_jax.evaluation.tables import file_stem, write_tables
    from macosnet_jax.training.workdir import best_checkpoint_dir
    settings = evaluation_settings(config)
    best = best_checkpoint_dir(workdir)
    source = best if os.path.isdir(best) else workdir  # a run with validation: its best state
    matcher = predict.Matcher.from_checkpoint(source, layout="macosnet")
    out_dir = os.path.join(os.path.abspath(workdir), "eval")
    split = resolve_split(settings["dataset"], settings["split"])
    logging.info("Evaluating %s (split %s) with the %s of %s", settings["dataset"], split,
                 "best-validation checkpoint" if source == best else "newest checkpoint", workdir)
    tables = evaluate_dataset(settings["dataset"], matcher.match, split=split, data_dir=settings["data_dir"],
                              out_dir=out_dir, **settings["options"])
    if jax.process_index() == 0:
        text_path, json_path = write_tables(tables, out_dir, stem=file_stem(f"{settings['dataset']}_{split}"))
        print("\n\n".join(table.to_text() for table in tables.values()))
        logging.info("Wrote %s and %s", text_path, json_path)
    return tables
