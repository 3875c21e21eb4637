"""The CPU demo end to end on its smoke config (configs/demo.py:quick): both stages, evaluation, pictures, resume."""
import json

import jax
import numpy as np
import pytest

from macosnet_jax import checkpoint, demo, demo_report, errors, train


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("demo")
    config = demo.load_config("quick")
    summary = demo.run_demo(config, str(workdir))
    return config, workdir, summary


def test_demo_writes_results_tables_and_pictures(quick_run):
    config, workdir, summary = quick_run
    results = json.loads((workdir / "results.json").read_text())
    assert config.variants == "matching_only,coseg_only" and demo.load_config().variants == ""
    assert set(results["tables"]) == {"identity", "all_foreground", "centred_box", "strong_only", "matching_only",
                                      "coseg_only", "joint"}
    for method in ("identity", "strong_only", "matching_only", "joint"):
        assert 0.0 <= summary[f"{method}/PCK@0.1"] <= 1.0
    for method in ("all_foreground", "centred_box", "coseg_only", "joint"):
        assert 0.0 <= summary[f"{method}/P"] <= 1.0 and 0.0 <= summary[f"{method}/J"] <= 1.0
    # Each stream-alone row shows its own stream only; results.json's tables keep the rest.
    assert "matching_only/J" not in summary and "coseg_only/PCK@0.1" not in summary
    assert "coseg" in results["tables"]["matching_only"] and "kp_extent" in results["tables"]["coseg_only"]
    # Mask baselines predict no warp: no PCK entries that would only repeat the identity's.
    assert not any(k.startswith(("all_foreground/PCK", "centred_box/PCK")) for k in summary)
    assert 0.0 <= summary["joint/PCK@0.1_img"] <= 1.0 and "strong_only/J" not in summary
    # The all-foreground mask labels every pixel foreground: P equals J equals the foreground fraction.
    assert summary["all_foreground/P"] == pytest.approx(summary["all_foreground/J"])
    assert "convention: kp_extent" in (workdir / "results.txt").read_text()
    pictures = sorted(p.name for p in (workdir / "pictures").iterdir())
    assert pictures == ["pair0_keypoints.png", "pair0_match.png"]


def _stage_variables(workdir, stage, step=None):
    """A demo stage's saved variables (its last checkpoint, or `step`), on one device."""
    mesh = train.make_mesh(jax.devices()[:1])
    return checkpoint.load_variables(str(workdir / stage), train.replicated(mesh), step=step)


def test_joint_stage_starts_from_the_strong_stage_and_freezes_its_encoder(quick_run):
    config, workdir, _ = quick_run
    strong = _stage_variables(workdir, "strong")
    joint_first = _stage_variables(workdir, "joint", step=config.joint.checkpoint_every_steps)
    # The perceptual network F of the contrastive loss is the strong stage's final encoder, unchanged.
    for got, want in zip(jax.tree.leaves(joint_first["frozen"]["params"]),
                         jax.tree.leaves(strong["params"]["encoder"])):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_stream_alone_variants_train_one_stream_from_the_strong_stage(quick_run):
    config, workdir, _ = quick_run
    joint_last = _stage_variables(workdir, "joint")
    matching_last = _stage_variables(workdir, "matching_only")
    matching_first = _stage_variables(workdir, "matching_only", step=config.joint.checkpoint_every_steps)
    # Matching alone gives the decoder no gradient: it stays at its initialisation while the matcher trains.
    for first, last in zip(jax.tree.leaves(matching_first["params"]["decoder"]),
                           jax.tree.leaves(matching_last["params"]["decoder"])):
        np.testing.assert_array_equal(np.asarray(first), np.asarray(last))
    assert any(not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(
        jax.tree.leaves(matching_last["params"]["matching"]), jax.tree.leaves(joint_last["params"]["matching"])))
    with pytest.raises(errors.UserError, match="config.variants: unknown joint-stage variant 'matching_alone'"):
        demo.variant_config(config, "matching_alone", str(workdir / "strong"))
    coseg = demo.variant_config(config, "coseg_only", str(workdir / "strong"), seed=7)
    assert coseg.seed == 7 and coseg.init_from == str(workdir / "strong")
    assert (coseg.losses.matching, coseg.losses.contrastive) == (0.0, config.joint.losses.contrastive)


def test_rerun_resumes_without_retraining(quick_run):
    config, workdir, summary = quick_run

    def checkpoints():
        return {str(p): p.stat().st_mtime for stage in ("strong", "joint", *config.variants.split(","))
                for p in (workdir / stage / "checkpoints").iterdir()}

    before = checkpoints()
    again = demo.run_demo(config, str(workdir))
    assert checkpoints() == before  # finished stages are restored, not retrained or re-saved
    for key, value in summary.items():
        if "/" in key:
            assert again[key] == pytest.approx(value, abs=1e-6), key


def test_report_is_one_table_with_blanks_timing_and_paths():
    summary = {"identity/PCK@0.1": 0.07, "identity/PCK@0.1_img": 0.3, "centred_box/J": 0.484,
               "centred_box/P": 0.865, "joint/PCK@0.05": 0.1, "joint/PCK@0.1": 0.2, "joint/PCK@0.1_img": 0.6,
               "joint/P": 0.9, "joint/J": 0.55}
    text = demo_report.format_report(summary, ["identity", "centred_box", "joint"], title="T", notes=["note"],
                                     timing={"strong stage": 61, "total": 125}, files={"pictures": "/w/pictures"})
    lines = text.splitlines()
    header = next(line for line in lines if "PCK@.1 kp" in line)
    rows = {name: next(line for line in lines if line.startswith(demo_report.ROW_NAMES[name]))
            for name in ("identity", "centred_box", "joint")}
    assert len({len(line) for line in rows.values()} | {len(header)}) == 1  # aligned columns
    assert rows["joint"].split()[-5:] == ["0.1000", "0.2000", "0.6000", "0.9000", "0.5500"]
    assert rows["centred_box"].split()[-2:] == ["0.8650", "0.4840"] and "0.0700" not in rows["centred_box"]
    assert rows["identity"].rstrip().endswith("0.3000")  # blank P/J columns
    assert "time: strong stage 1m01s, total 2m05s" in lines and "pictures: /w/pictures" in lines


def test_summarize_keeps_each_methods_own_outputs():
    def table(row):
        return {"rows": {"all": row}, "summary_rows": ["all"]}
    results = {"centred_box": {"kp_extent": table({"PCK@0.1": 0.07}), "coseg": table({"P": 0.8, "J": 0.5})},
               "strong_only": {"kp_extent": table({"PCK@0.05": 0.1, "PCK@0.1": 0.2, "PCK@0.1 per-kp": 0.3}),
                               "img224": table({"PCK@0.05": 0.4, "PCK@0.1": 0.5})}}
    assert demo_report.summarize(results) == {"centred_box/P": 0.8, "centred_box/J": 0.5, "strong_only/PCK@0.05": 0.1,
                                              "strong_only/PCK@0.1": 0.2, "strong_only/PCK@0.1_img": 0.5}


def test_progress_lines_overwrite_each_other_on_a_terminal():
    """On a terminal a stage's progress lines share one line (carriage return, erase, the newline taken back);
    the next other line closes it. Elsewhere (files, CI logs) every line stands."""
    import io
    import logging as py_logging

    def record(module, msg):
        rec = py_logging.LogRecord("absl", py_logging.INFO, f"{module}.py", 1, msg, None, None)
        rec.module = module
        return rec
    formatter = demo_report._ProgressInPlace()
    written = "".join(formatter.format(r) + "\n" for r in (
        record("demo", "Stage 1/2"), record("train", "step 50/100"), record("train", "step 100/100"),
        record("demo", "Stage 2/2")))
    assert written == ("Stage 1/2\n\rstep 50/100\x1b[K\x1b[1A\n\rstep 100/100\x1b[K\x1b[1A\n"
                       "\nStage 2/2\n")
    assert not demo_report._is_terminal(io.StringIO())


@pytest.mark.parametrize("terminal", [True, False])
def test_quiet_logging_overwrites_progress_on_a_terminal_only(terminal):
    """quiet_logging picks the in-place progress format when absl's handler writes to a terminal (stderr a pty)."""
    import os
    import pty
    import subprocess
    import sys
    code = ("from absl import logging; from macosnet_jax import demo_report; demo_report.quiet_logging(); "
            "print(type(logging.get_absl_handler().python_handler.formatter).__name__)")
    if terminal:
        leader, follower = pty.openpty()
        stderr = follower
    else:
        stderr = subprocess.DEVNULL
    try:
        out = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=stderr, text=True,
                             timeout=120, check=True).stdout.strip()
    finally:
        if terminal:
            os.close(follower)
            os.close(leader)
    assert out == ("_ProgressInPlace" if terminal else "Formatter")


def test_objective_notes_name_the_additions_beyond_the_paper():
    config = demo.load_config()
    full = demo.objective_notes(demo.variant_config(config, "full", "strong"))[0]
    assert "matching pseudo-labels" in full and "colour-edge smoothness" in full
    matching = demo.variant_config(config, "matching_only", "strong")
    assert matching.losses.smoothness == 0.0 and "smoothness" not in demo.objective_notes(matching)[0]
