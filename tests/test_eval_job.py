"""The evaluation job: `macosnet --mode eval` on a work dir of ours (main.run_eval), Matcher.from_checkpoint with
layout 'macosnet', and evaluate.evaluate_dataset on tfds datasets built from the builders' dummy data and on the
held-out synthetic_objects pairs. Nothing is trained: the work dir holds a tiny random joint model's checkpoint.
"""
import importlib.util
import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from macosnet_jax import checkpoint, evaluate, predict, stages
from macosnet_jax.models import factory
from macosnet_jax.data import synthetic

REPO = pathlib.Path(__file__).resolve().parents[1]
STEP = 3


def _config(name, arg="runlocal"):
    """get_config(arg) of configs/<name>.py."""
    path = REPO / "configs" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"cfg_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def _write_run(workdir, config, variables, step=STEP):
    """A work dir as train.py leaves it: config.json and one checkpoint (step, params, batch_stats)."""
    os.makedirs(workdir, exist_ok=True)
    config_dict = json.loads(config.to_json_best_effort())
    (pathlib.Path(workdir) / "config.json").write_text(json.dumps(config_dict, indent=1, sort_keys=True))
    state = {"step": jnp.asarray(step, jnp.int32), "params": variables["params"],
             "batch_stats": variables["batch_stats"]}
    ckpt = checkpoint.Checkpointer(checkpoint.checkpoint_dir(workdir), async_save=False)
    ckpt.save(step, state, config_dict, {"step": step})
    ckpt.close()


@pytest.fixture(scope="module")
def joint_run(tmp_path_factory):
    """(work dir, variables) of a tiny random MaCoSNet (the TSS joint config's runlocal model, width 8, 64 px)."""
    config = _config("macosnet_tss")
    config.model.width = 8
    model = factory.macosnet_model(config)
    images = jnp.zeros((1, config.image_size, config.image_size, 3), jnp.float32)
    init = jax.jit(lambda key: model.init(key, images, images, train=False))
    variables = jax.device_get(init(stages.fast_init_key(jax.random.key(0))))
    workdir = str(tmp_path_factory.mktemp("joint_run"))
    _write_run(workdir, config, variables)
    return workdir, variables


@pytest.fixture(scope="module")
def matcher(joint_run):
    return predict.Matcher.from_checkpoint(joint_run[0], layout="macosnet")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A tfds data dir with pf_pascal, tss and internet built from the builders' dummy data."""
    from macosnet_datasets import build
    out = str(tmp_path_factory.mktemp("tfds"))
    for name in ("pf_pascal", "tss", "internet"):
        build.build(name, str(REPO / "datasets" / name / "dummy_data"), out)
    return out


def _leaves(tree):
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def _check_rows(table, rows, columns, summary):
    assert list(table.rows) == rows
    assert table.columns == columns
    assert table.summary_rows == [summary]
    for name in rows:
        for column in columns:
            value = table.rows[name][column]
            assert 0.0 <= value <= 1.0, (name, column, value)


# --------------------------------------------------------------------------------------------------------------
# Matcher.from_checkpoint(layout='macosnet').


def test_from_checkpoint_reproduces_the_saved_variables(joint_run, matcher):
    workdir, variables = joint_run
    from macosnet_jax.models.macosnet import MaCoSNet
    assert isinstance(matcher.model, MaCoSNet) and matcher.image_size == 64
    expected = _leaves({"params": variables["params"], "batch_stats": variables["batch_stats"]})
    got = _leaves(matcher.variables)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)
    # The checkpoints/ folder works as well as the work dir.
    again = predict.Matcher.from_checkpoint(os.path.join(workdir, "checkpoints"), layout="macosnet")
    np.testing.assert_array_equal(_leaves(again.variables)[next(iter(expected))], next(iter(expected.values())))
    with pytest.raises(ValueError, match="image_size=32 was asked for"):
        predict.Matcher.from_checkpoint(workdir, layout="macosnet", image_size=32)


def test_a_work_dir_needs_no_layout_and_its_broken_newest_step_is_skipped(joint_run, tmp_path, caplog):
    """Matcher.from_checkpoint(<work dir>) and `macosnet-predict --checkpoint <work dir>` build the model from the
    run's config.json, and read the newest step that restores (an empty step folder 9 beside the good step 3)."""
    import logging
    import shutil
    from macosnet_jax import predict_cli
    workdir, variables = joint_run
    run = tmp_path / "run"
    shutil.copytree(workdir, run)
    (run / "checkpoints" / "9").mkdir()
    with caplog.at_level(logging.WARNING):
        loaded = predict.Matcher.from_checkpoint(run)
    assert any("/9 is unreadable" in r.getMessage() for r in caplog.records)
    key = "['params']['matching']['encoder']['conv1']['kernel']"
    np.testing.assert_array_equal(_leaves(loaded.variables)[key],
                                  np.asarray(variables["params"]["matching"]["encoder"]["conv1"]["kernel"]))
    (run / "checkpoints" / "11").mkdir()
    images = []
    for name, shape in (("a.png", (40, 50, 3)), ("b.png", (30, 44, 3))):
        Image.fromarray(np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)).save(tmp_path / name)
        images.append(str(tmp_path / name))
    status = predict_cli.main(images + ["--checkpoint", str(run), "--out", str(tmp_path / "out")])
    assert status == 0
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["has_masks"] is True and result["model"]["layout"] == "macosnet"


def test_from_checkpoint_builds_a_matching_model_for_the_matching_stages(joint_run, tmp_path):
    """A strong/weak-stage run gives a MatchingModel (no masks); its variables are the joint model's 'matching'."""
    _, variables = joint_run
    config = _config("strong_synthetic")
    config.model.width = 8
    matching = {k: variables[k]["matching"] for k in ("params", "batch_stats")}
    _write_run(str(tmp_path), config, matching)
    loaded = predict.Matcher.from_checkpoint(str(tmp_path), layout="macosnet")
    from macosnet_jax.models.matching import MatchingModel
    assert isinstance(loaded.model, MatchingModel) and not hasattr(loaded.model, "predict")
    np.testing.assert_array_equal(_leaves(loaded.variables)["['params']['encoder']['conv1']['kernel']"],
                                  np.asarray(matching["params"]["encoder"]["conv1"]["kernel"]))


def test_from_checkpoint_errors_name_what_is_missing(joint_run, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such directory"):
        predict.Matcher.from_checkpoint(tmp_path / "absent", layout="macosnet")
    with pytest.raises(FileNotFoundError, match="no checkpoint here"):
        predict.Matcher.from_checkpoint(tmp_path, layout="macosnet")
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "config.json").write_text(pathlib.Path(joint_run[0], "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="no checkpoint in this folder"):
        predict.Matcher.from_checkpoint(tmp_path, layout="macosnet")
    no_config = tmp_path / "no_config"
    no_config.mkdir()
    os.symlink(os.path.join(joint_run[0], "checkpoints"), no_config / "checkpoints")
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        predict.Matcher.from_checkpoint(no_config, layout="macosnet")
    with pytest.raises(FileNotFoundError, match=r"no checkpoint of step 7 \(steps there: \[3\]\)"):
        predict.Matcher.from_checkpoint(joint_run[0], layout="macosnet", step=7)


# --------------------------------------------------------------------------------------------------------------
# The eval job and evaluate_dataset.


def test_run_eval_on_tss_writes_tables_flo_files_and_masks(joint_run, data_dir, capsys):
    from macosnet_jax import main
    workdir = joint_run[0]
    config = _config("macosnet_tss")  # its evaluation: tss, split test
    config.evaluation.data_dir = data_dir
    tables = main.run_eval(config, workdir)
    out = pathlib.Path(workdir) / "eval"
    assert "TSS flow PCK@0.05" in capsys.readouterr().out
    assert set(tables) == {"flow_pck", "coseg"}
    flow = tables["flow_pck"]
    _check_rows(flow, ["FG3DCar", "JODS", "PASCAL", "mean"], ["flip_back", "compat"], "mean")
    assert flow.counts == {"FG3DCar": 2, "JODS": 2, "PASCAL": 2, "mean": 6}
    for mode in ("flip_back", "compat"):  # mean = unweighted mean of the subsets
        assert flow.rows["mean"][mode] == pytest.approx(np.mean([flow.rows[s][mode] for s in evaluate.TSS_SUBSETS]))
    for subset in ("FG3DCar", "JODS"):  # no mirrored pair there: both flip treatments agree
        assert flow.rows[subset]["flip_back"] == flow.rows[subset]["compat"]
    _check_rows(tables["coseg"], ["FG3DCar", "JODS", "PASCAL", "mean"],
                ["flip_back P", "flip_back J", "compat P", "compat J"], "mean")
    saved = json.loads((out / "tss_test.json").read_text())
    assert set(saved) == {"flow_pck", "coseg"} and saved["flow_pck"]["rows"]["mean"]["compat"] == pytest.approx(
        flow.rows["mean"]["compat"])
    assert any("0.769" in note for note in saved["flow_pck"]["notes"])
    assert "flip_back" in (out / "tss_test.txt").read_text()
    flos = sorted((out / "tss_flo").glob("*.flo"))
    assert len(flos) == 6 and "PASCAL_aeroplane01_flow2_flip.flo" in {f.name for f in flos}
    for path in flos:
        field = evaluate.read_flo(path)
        assert field.ndim == 3 and field.shape[-1] == 2 and np.all(np.isfinite(field))
    masks = sorted((out / "tss_masks").glob("*.png"))
    assert len(masks) == 12
    assert set(np.unique(np.asarray(Image.open(masks[0])))) <= {0, 255}


def test_validation_fn_scores_the_configured_split_and_best_dir_is_used(joint_run, data_dir, tmp_path):
    """Early stopping's validation (main.validation_fn) scores what run_eval scores, from a live state; a run's
    best/ folder (train.best_checkpoint_dir) is what run_eval and Matcher.from_checkpoint read when it exists."""
    import shutil
    import types

    from macosnet_jax import main, train
    workdir, variables = joint_run
    config = _config("macosnet_tss")
    config.model.width = 8
    config.evaluation.data_dir = data_dir
    config.evaluation.every_steps = 0
    assert main.validation_fn(config) is None  # validation off
    config.evaluation.every_steps = 5
    state = types.SimpleNamespace(params=jax.tree.map(jnp.asarray, variables["params"]),
                                  batch_stats=jax.tree.map(jnp.asarray, variables["batch_stats"]))
    validate = main.validation_fn(config)
    score = validate(state)
    assert validate(state) == score  # the second call reuses the jitted matcher with the new weights
    tables = evaluate.evaluate_dataset("tss", predict.Matcher.from_checkpoint(workdir, layout="macosnet").match,
                                       split="test", data_dir=data_dir)
    assert score == pytest.approx(tables["flow_pck"].rows["mean"]["flip_back"])
    assert main.validation_score(tables, "coseg/compat J") == pytest.approx(tables["coseg"].rows["mean"]["compat J"])
    with pytest.raises(ValueError, match="flow_pck/flip_back"):
        main.validation_score(tables, "flow_pck/PCK@0.1")
    # A copy of the run with a best/ folder: from_checkpoint accepts it, run_eval prefers it.
    run = tmp_path / "run"
    shutil.copytree(workdir, run, ignore=shutil.ignore_patterns("eval"))
    shutil.copytree(run / "checkpoints", train.best_checkpoint_dir(run))
    assert predict.run_directories(train.best_checkpoint_dir(run)) == (str(run), train.best_checkpoint_dir(run))
    shutil.rmtree(run / "checkpoints")  # only best/ is left: run_eval must read it
    assert main.run_eval(config, str(run))["flow_pck"].rows["mean"]["flip_back"] == pytest.approx(score)


def test_pf_pascal_tables_follow_the_conventions(matcher, data_dir, tmp_path):
    tables = evaluate.evaluate_dataset("pf_pascal", matcher.match, split="test", data_dir=data_dir)
    assert list(tables) == ["img224", "kp_extent"]
    columns = [f"PCK@{a}" for a in ("0.05", "0.1", "0.15")] + [f"PCK@{a} per-kp" for a in ("0.05", "0.1", "0.15")]
    for name, table in tables.items():
        # class names from the builder's info, in VOC order, then 'all' over pairs
        _check_rows(table, ["aeroplane", "car", "tvmonitor", "all"], columns, "all")
        assert table.convention.startswith(name) and table.counts["all"] == 3
        for column in columns:
            assert table.rows["all"][column] == pytest.approx(
                np.mean([table.rows[c][column] for c in ("aeroplane", "car", "tvmonitor")])
                if "per-kp" not in column else table.rows["all"][column])
    assert any("0.790 under img224" in note for note in tables["img224"].notes)
    text_path, json_path = evaluate.write_tables(tables, tmp_path, stem="pf_pascal_test")
    assert "img224 (scnet)" in text_path.read_text()
    assert json.loads(json_path.read_text())["kp_extent"]["rows"]["all"]["PCK@0.1"] == pytest.approx(
        tables["kp_extent"].rows["all"]["PCK@0.1"])


def test_internet_scores_the_100_image_subsets(matcher, data_dir, tmp_path):
    tables = evaluate.evaluate_dataset("internet", matcher.match, split="test", data_dir=data_dir, out_dir=tmp_path)
    table = tables["coseg"]
    assert list(tables) == ["coseg"] and "split subset100" in " ".join(table.notes)
    _check_rows(table, ["airplane", "car", "horse", "mean"], ["P", "J"], "mean")
    assert table.counts == {"airplane": 1, "car": 1, "horse": 1, "mean": 3}
    assert table.rows["mean"]["P"] == pytest.approx(np.mean([table.rows[c]["P"] for c in ("airplane", "car", "horse")]))
    masks = sorted((tmp_path / "internet_masks").rglob("*.png"))
    assert [m.parent.name for m in masks] == ["airplane", "car", "horse"]


def test_synthetic_objects_pairs_and_tables(matcher):
    options = dict(image_size=64, num_images=12, num_pairs=4, num_categories=4, seed=1000)
    tables = evaluate.evaluate_dataset("synthetic_objects", matcher.match, split="test", **options)
    assert list(tables) == ["kp_extent", "img224", "coseg"]
    assert tables["kp_extent"].counts["all"] == 4 and tables["coseg"].counts["mean"] == 8  # 2 masks per pair
    pairs = synthetic.make_synthetic_pairs(12, 64, 1000, 4, 4)
    again = synthetic.make_synthetic_pairs(12, 64, 1000, 4, 4)
    assert [p["pair_id"] for p in pairs] == [p["pair_id"] for p in again]
    for pair in pairs:
        assert pair["image_a"].shape == (64, 64, 3) and pair["keypoints_a"].shape == pair["keypoints_b"].shape
        assert pair["keypoints_a"].shape[0] >= 1 and pair["mask_a"].shape[:2] == (64, 64)


def test_demo_uses_make_synthetic_pairs():
    import ml_collections
    from macosnet_jax import demo
    config = ml_collections.ConfigDict({"image_size": 64, "data": {"num_categories": 4},
                                        "eval": {"num_images": 6, "seed": 5, "num_pairs": 3}})
    pairs = demo.evaluation_pairs(config)
    expected = synthetic.make_synthetic_pairs(6, 64, 5, 4, 3)
    assert [p["pair_id"] for p in pairs] == [p["pair_id"] for p in expected]
    np.testing.assert_array_equal(pairs[0]["keypoints_b"], expected[0]["keypoints_b"])


def test_unprepared_or_unknown_datasets_give_clear_errors(tmp_path, data_dir):
    predictor = lambda a, b: {"theta_aff": np.array([1.0, 0, 0, 0, 1, 0])}  # noqa: E731 (never called)
    with pytest.raises(evaluate.DatasetNotPreparedError, match=r"python -m macosnet_datasets.build pf_willow"):
        evaluate.evaluate_dataset("pf_willow", predictor, split="test", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="unknown dataset 'voc'"):
        evaluate.evaluate_dataset("voc", predictor, split="test")
    with pytest.raises(ValueError, match=r"has no split 'train'; its splits are \['test'\]"):
        evaluate.evaluate_dataset("tss", predictor, split="train", data_dir=data_dir)
    with pytest.raises(ValueError, match="needs image_size"):
        evaluate.evaluate_dataset("synthetic_objects", predictor, split="test")


def test_evaluation_settings_from_configs():
    from macosnet_jax import main
    settings = main.evaluation_settings(_config("macosnet_tss", "data_dir=/data/tfds"))
    assert settings == {"dataset": "tss", "split": "test", "data_dir": "/data/tfds", "options": {}}
    settings = main.evaluation_settings(_config("macosnet_pfpascal", "data_dir=/data/tfds"))
    assert (settings["dataset"], settings["split"]) == ("pf_pascal", "validation")
    config = _config("strong_synthetic")  # no config.evaluation: the held-out synthetic pairs of its categories
    settings = main.evaluation_settings(config)
    assert settings["dataset"] == "synthetic_objects" and settings["options"] == dict(
        image_size=64, num_images=48, num_pairs=50, seed=1000 + config.seed, num_categories=4)
    assert evaluate.resolve_split("internet", "test") == "subset100"
    assert evaluate.resolve_split("pf_willow/macosnet", None) == "test"


@pytest.mark.slow
def test_cli_eval_on_synthetic_objects(joint_run, tmp_path):
    """`macosnet --config ... --workdir W --mode eval` end to end in a subprocess (about 20 s on 2 cores)."""
    import shutil
    import subprocess
    import sys
    workdir = tmp_path / "run"
    shutil.copytree(joint_run[0], workdir)
    (workdir / "checkpoints" / "9").mkdir()  # a broken newest step: skipped with a warning
    config = str(REPO / "configs" / "macosnet_tss.py:runlocal")
    command = [sys.executable, "-m", "macosnet_jax.main", "--config", config,
               "--config.evaluation.dataset=synthetic_objects", "--workdir", str(workdir), "--mode", "eval"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "checkpoints/9 is unreadable" in result.stderr
    assert "synthetic co-segmentation" in result.stdout
    tables = json.loads((workdir / "eval" / "synthetic_objects_test.json").read_text())
    assert set(tables) == {"kp_extent", "img224", "coseg"} and tables["kp_extent"]["counts"]["all"] == 50
