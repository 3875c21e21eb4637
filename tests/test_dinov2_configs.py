"""The DINOv2 experiment configs end to end on the tfds builders' dummy data: `:runlocal` (a random tiny ViT at
56 px) trains 3 steps with its validation, `--mode eval` (main.run_eval) scores the run, and a Matcher built from
the work dir (the run's config.json says backbone 'dinov2') matches two images and transfers points."""
import importlib.util
import json
import pathlib

import jax
import numpy as np
import pytest
from PIL import Image

from macosnet_jax import main, predict, train

REPO = pathlib.Path(__file__).resolve().parents[1]
CASES = {"macosnet_spair_dinov2": ("spair71k", "SPair-71k/JPEGImages/aeroplane/2008_00000{}.jpg"),
         "macosnet_pfpascal_dinov2": ("pf_pascal", None)}


def _config(name, arg):
    spec = importlib.util.spec_from_file_location(f"cfg_{name}", REPO / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def _two_images(dataset, pattern):
    dummy = REPO / "datasets" / dataset / "dummy_data"
    paths = [dummy / pattern.format(i) for i in (0, 1)] if pattern else sorted(dummy.rglob("*.jpg"))[:2]
    return [np.asarray(Image.open(p).convert("RGB")) for p in paths]


def test_paper_scale_values():
    """224 px ViT-S/14 from the official file, frozen, into matching/encoder; the joint stage's five losses."""
    config = _config("macosnet_spair_dinov2", "dinov2=/w/dinov2_vits14_pretrain.pth,data_dir=/d")
    assert config.stage == "joint" and config.image_size == 224 and config.model.backbone == "dinov2"
    assert (config.model.vit_embed_dim, config.model.vit_depth, config.model.vit_heads) == (384, 12, 6)
    assert dict(config.init_torch) == {"path": "/w/dinov2_vits14_pretrain.pth", "layout": "dinov2",
                                       "prefix": "matching/encoder"}
    assert config.optimizer.frozen_groups == ["encoder"] and config.losses.transitivity == 1.0
    assert all(config.losses[k] == 1.0 for k in ("matching", "cycle", "contrastive", "task"))
    tuned = _config("macosnet_pfpascal_dinov2", "encoder=finetune,encoder_lr=1e-5,vit=base")
    assert tuned.optimizer.frozen_groups == [] and tuned.optimizer.group_lr["encoder"] == 1e-5
    assert tuned.model.vit_embed_dim == 768 and tuned.total_steps == 60 * round(2940 / 4)
    with pytest.raises(ValueError, match="encoder='partly'"):
        _config("macosnet_pfpascal_dinov2", "encoder=partly")


@pytest.mark.parametrize("name", sorted(CASES))
def test_runlocal_trains_evaluates_and_matches(name, tmp_path):
    from macosnet_datasets import build
    dataset, pattern = CASES[name]
    data_dir = str(tmp_path / "tfds")
    build.build(dataset, str(REPO / "datasets" / dataset / "dummy_data"), data_dir)
    config = _config(name, f"runlocal,data_dir={data_dir}")
    workdir = str(tmp_path / "run")
    train.train_and_evaluate(config, workdir, mesh=train.make_mesh(jax.devices()[:1]),
                             validate=main.validation_fn(config))
    losses = [json.loads(line)["loss"] for line in open(f"{workdir}/metrics.jsonl") if '"loss"' in line]
    assert len(losses) == 3 and np.all(np.isfinite(losses))
    assert json.loads(pathlib.Path(f"{workdir}/config.json").read_text())["model"]["backbone"] == "dinov2"

    tables = main.run_eval(config, workdir)
    assert tables and (tmp_path / "run" / "eval").is_dir()

    matcher = predict.Matcher.from_checkpoint(workdir)
    assert matcher.model.matching.backbone == "dinov2" and matcher.image_size == 56
    image_a, image_b = _two_images(dataset, pattern)
    out = matcher.match(image_a, image_b)
    assert out["theta_aff"].shape == (6,) and out["theta_tps"].shape == (18,)
    assert out["mask_a"].shape == out["mask_b"].shape == (56, 56)
    points = matcher.transfer(np.array([[10.0, 12.0], [30.0, 20.0]], np.float32))
    assert points.shape == (2, 2) and np.all(np.isfinite(points))
