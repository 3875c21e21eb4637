"""Smoke tests of the research probes on the demo's quick run (`python -m pytest research/`; not part of the
package's suite: these scripts use the package's internals and may break when those change)."""
import importlib.util
import os
import pathlib

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # keep TensorFlow off any GPU

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from macosnet_jax import demo  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("demo")
    config = demo.load_config("quick")
    summary = demo.run_demo(config, str(workdir))
    return config, workdir, summary


def test_mask_signals_script_on_the_quick_run(quick_run, capsys):
    """research/mask_signals.py: the landscape rows and per-term pushes; the 'gt' row's contrastive d⁺ is small and
    the all-background row's is exactly 0 (both foregrounds empty → identical descriptors)."""
    _, workdir, _ = quick_run
    path = HERE / "mask_signals.py"
    spec = importlib.util.spec_from_file_location("mask_signals", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    labels = np.array([True, True, False, False])
    assert module._auc(np.array([3.0, 2.0, 1.0, 0.0]), labels, samples=200) == 1.0
    assert module._auc(np.array([0.0, 1.0, 2.0, 3.0]), labels, samples=200) == 0.0
    module.main(["--config", str(demo.DEFAULT_CONFIG) + ":quick", "--init_from", str(workdir / "strong"),
                 "--batch", "2"])
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.split()
            and line.split()[0] in module.CONSTRUCTED}
    assert set(rows) == set(module.CONSTRUCTED)
    header = next(line for line in out.splitlines() if line.startswith("masks")).split()[1:]
    assert float(rows["all_bg"][header.index("contrastive")]) < 1e-6 or \
        float(rows["all_bg"][header.index("contrastive")]) <= float(rows["gt"][header.index("contrastive")])
    assert "matching" in out and "AUC" in out and "(no gradient to the masks)" in out  # cycle/transitivity
    assert "mask_label" in header and "AUC of z" in out and "confident labels" in out  # the demo's label signal


def test_pseudo_label_partners_script_on_the_quick_run(quick_run, capsys):
    """research/pseudo_label_partners.py: partners share the anchor's category and are never the anchor; one table
    row per (K, τ) with AUC and fractions in [0, 1]."""
    _, workdir, _ = quick_run
    path = HERE / "pseudo_label_partners.py"
    spec = importlib.util.spec_from_file_location("pseudo_label_partners", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    categories = np.arange(12) % 3
    partners = module.partner_indices(categories, np.arange(12), 5)
    assert np.all(categories[partners] == categories[:, None]) and not np.any(partners == np.arange(12)[:, None])
    with pytest.raises(ValueError, match="only one"):
        module.partner_indices(np.array([0, 1, 1]), np.array([0]), 1)
    module.main(["--config", str(demo.DEFAULT_CONFIG) + ":quick", "--init_from", str(workdir / "strong"),
                 "--partners", "1,2", "--anchors", "6", "--thresholds", "0.5"])
    rows = [line.split() for line in capsys.readouterr().out.splitlines()
            if line.split() and line.split()[0] in ("1", "2")]
    assert [r[0] for r in rows] == ["1", "2"]
    for row in rows:
        assert all(0.0 <= float(v) <= 1.0 for v in (row[1], row[3], row[4], row[5]))


def test_step_budget_script_on_the_quick_run(quick_run, tmp_path, capsys):
    """research/step_budget.py: one row per (seed, budget), the longer budget resumes the shorter one's run (its
    metrics log reaches the last budget's step), a --set override reaches the trainer's config, and the JSON file
    holds the rows."""
    import json
    _, workdir, _ = quick_run
    spec = importlib.util.spec_from_file_location("step_budget", HERE / "step_budget.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--workdir", str(tmp_path), "--strong_dir", str(workdir / "strong"), "--config_arg", "quick",
                 "--steps", "2,3", "--seeds", "0", "--variants", "full", "--eval_seed", "7",
                 "--set", "joint.losses.cycle=0.25", "--tag", "_t"])
    rows = json.loads((tmp_path / "step_budget_t.json").read_text())
    assert [(r["variant"], r["seed"], r["steps"]) for r in rows] == [("full_t", 0, 2), ("full_t", 0, 3)]
    assert all(0.0 <= r["PCK@0.1"] <= 1.0 and 0.0 <= r["J"] <= 1.0 for r in rows)
    run = tmp_path / "full_seed0_t"
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 3
    assert json.loads((run / "config.json").read_text())["losses"]["cycle"] == 0.25
    assert "mean over seeds" in capsys.readouterr().out
