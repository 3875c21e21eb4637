"""DINOv2 parity table: the Flax ViT (models/dinov2.py, loaded by weights.load_dinov2) against every array of the
official-PyTorch fixtures in tests/fixtures/dinov2/ (a tiny random ViT with the official names; README.md there).

    .venv/bin/python scripts/dinov2_parity.py                     # ~20 s on 2 CPU cores
    .venv/bin/python scripts/dinov2_parity.py --fixtures /path/to/fixtures/dinov2 --weights vit_tiny.npz

Why: tests/test_dinov2.py says pass/fail; this prints the margin, one max abs error (float32 outputs, compared in
float64) per fixture array, against the fixtures' tolerance 1e-5 absolute. Covered, per input case of
vit_tiny.json (native 98x98, interp 126x154, batch 2x112x112, down 70x84): patch_embed, pos_embed_interp, tokens,
block_outputs, the forward_features outputs (cls / reg / patch / prenorm), get_intermediate_layers (n=2 and a
block list passed in reverse order, both reshaped with the class token and normed; n=1 raw); the masked forward
(native); and both bicubic variants of pos_interp.npz. Prints a markdown table

  case | output | shape | max abs err | tol | ok

and exits 1 if any array is outside the tolerance or has the wrong shape.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

from macosnet_jax import weights
from macosnet_jax.models import dinov2 as dv

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "dinov2"
ATOL = 1e-5


def max_abs_err(ours, ref) -> float:
    """Largest |ours - ref| in float64 (0 for empty arrays); inf when the shapes differ."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    if ours.shape != ref.shape:
        return float("inf")
    return float(np.max(np.abs(ours - ref))) if ref.size else 0.0


def _nhwc(x: np.ndarray) -> jax.Array:
    """(B, 3, H, W) fixture input -> (B, H, W, 3)."""
    return jnp.asarray(np.transpose(x, (0, 2, 3, 1)))


def _patch_embed(module, images):
    """(B, H, W, 3) -> (B, N, D): the patch conv, flattened row-major over the patch grid."""
    x = module.patch_embed(images)
    return x.reshape(x.shape[0], -1, x.shape[-1])


def _block_outputs(module, images):
    """(B, H, W, 3) -> (depth, B, T, D): every block's output, block 0 first."""
    x = module.prepare_tokens(images)
    outs = []
    for block in module.blocks:
        x = block(x)
        outs.append(x)
    return jnp.stack(outs)


def case_rows(case: str, data: dict, model, variables) -> list[tuple[str, str, np.ndarray, np.ndarray]]:
    """(case, output name, ours, reference) for every array of one input case of vit_tiny.npz."""
    x = _nhwc(data[f"{case}_x"])
    apply = lambda method=None, *args, **kw: model.apply(variables, x, *args, method=method, **kw)
    rows = [("patch_embed", apply(_patch_embed)),
            ("pos_embed_interp", dv.interpolate_pos_embed(variables["params"]["pos_embed"], x.shape[1], x.shape[2],
                                                          model.interpolate_offset, model.interpolate_antialias)),
            ("tokens", apply(model.prepare_tokens)),
            ("block_outputs", apply(_block_outputs))]
    out = jax.jit(model.apply)(variables, x)
    rows += [(key, out[key]) for key in ("x_norm_clstoken", "x_norm_regtokens", "x_norm_patchtokens", "x_prenorm")]
    gil = lambda **kw: apply(model.get_intermediate_layers, **kw)
    layers = [int(i) for i in data[f"{case}_gil_list_layers"]]
    for prefix, got in (("gil_n2", gil(n=2, reshape=True, return_class_token=True)),
                        ("gil_list", gil(n=layers[::-1], reshape=True, return_class_token=True))):
        rows.append((f"{prefix}_patch", jnp.stack([jnp.transpose(p, (0, 3, 1, 2)) for p, _ in got])))
        rows.append((f"{prefix}_cls", jnp.stack([c for _, c in got])))
    rows.append(("gil_n1_raw", gil(n=1, reshape=False, return_class_token=False, norm=False)[0]))
    if f"{case}_masks" in data:
        masks = jnp.asarray(data[f"{case}_masks"])
        rows.append(("masked_tokens", apply(model.prepare_tokens, masks)))
        masked = model.apply(variables, x, masks)
        rows += [(f"masked_{key}", masked[key]) for key in ("x_norm_clstoken", "x_norm_patchtokens", "x_prenorm")]
    return [(case, name, np.asarray(ours), data[f"{case}_{name}"]) for name, ours in rows]


def pos_interp_rows(ref: dict) -> list[tuple[str, str, np.ndarray, np.ndarray]]:
    """Both bicubic variants of pos_interp.npz: the bare scale-factor call (offset 0.1, no antialias) as the host
    weight matrices, the register models' antialiased size call through interpolate_pos_embed (7x7 is the
    identity there, compared on jax.image.resize since the model function skips the native size)."""
    grid = ref["grid"][0]  # (C, 7, 7)
    c, m = grid.shape[0], grid.shape[1]
    table = np.concatenate([np.zeros((1, 1, c)), grid.reshape(c, m * m).T[None]], axis=1).astype(np.float32)
    rows = []
    for h, w in ref["targets"]:
        h, w = int(h), int(w)
        noaa = np.einsum("hm,cmn,wn->chw", dv.bicubic_matrix(m, h, 0.1), grid, dv.bicubic_matrix(m, w, 0.1))
        rows.append((f"pos_interp {h}x{w}", "off01_noaa", noaa, ref[f"off01_noaa_{h}x{w}"][0]))
        if (h, w) == (m, m):
            aa = jax.image.resize(jnp.asarray(grid), (c, h, w), "cubic", antialias=True)
        else:
            pos = dv.interpolate_pos_embed(jnp.asarray(table), 14 * h, 14 * w, offset=0.0, antialias=True)
            aa = np.asarray(pos)[0, 1:].T.reshape(c, h, w)
        rows.append((f"pos_interp {h}x{w}", "size_aa", np.asarray(aa), ref[f"size_aa_{h}x{w}"][0]))
    return rows


def _state_dict_names(data: dict, cases: list[str]) -> list[str]:
    """The npz keys that are weights (no case prefix)."""
    return [k for k in data if not any(k.startswith(f"{case}_") for case in cases)]


def parity_rows(fixtures: pathlib.Path = FIXTURES, weights_file: str = "vit_tiny.pth",
                atol: float = ATOL) -> list[dict]:
    """Every fixture comparison -> [{case, output, shape, err, tol, ok}] (shape: the reference's)."""
    model, variables = weights.load_dinov2(fixtures / weights_file)
    with np.load(fixtures / "vit_tiny.npz") as f:
        data = {k: f[k] for k in f.files}
    cases = list(json.loads((fixtures / "vit_tiny.json").read_text())["cases"])
    compared = [row for case in cases for row in case_rows(case, data, model, variables)]
    inputs = {f"{case}_{name}" for case in cases for name in ("x", "masks", "gil_list_layers")}
    left = set(data) - set(_state_dict_names(data, cases)) - inputs - {f"{c}_{n}" for c, n, _, _ in compared}
    if left:
        raise ValueError(f"fixture arrays not compared: {sorted(left)}")
    with np.load(fixtures / "pos_interp.npz") as f:
        compared += pos_interp_rows({k: f[k] for k in f.files})
    rows = []
    for case, name, ours, ref in compared:
        err = max_abs_err(ours, ref)
        rows.append(dict(case=case, output=name, shape=tuple(ref.shape), err=err, tol=atol, ok=err <= atol))
    return rows


def markdown(rows: list[dict]) -> str:
    """The rows as a markdown table (case | output | shape | max abs err | tol | ok)."""
    lines = ["| case | output | shape | max abs err | tol | ok |", "|---|---|---|---|---|---|"]
    for r in rows:
        shape = "(" + ",".join(str(s) for s in r["shape"]) + ")"
        lines.append(f"| {r['case']} | {r['output']} | {shape} | {r['err']:.2e} | {r['tol']:.0e} | "
                     f"{'ok' if r['ok'] else 'FAIL'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fixtures", type=pathlib.Path, default=FIXTURES, help="folder of vit_tiny.* and pos_interp.npz")
    parser.add_argument("--weights", default="vit_tiny.pth", help="weights file in --fixtures (.pth or .npz)")
    parser.add_argument("--atol", type=float, default=ATOL)
    args = parser.parse_args(argv)
    rows = parity_rows(args.fixtures, args.weights, args.atol)
    print(markdown(rows))
    bad = [r for r in rows if not r["ok"]]
    print(f"\n{len(rows) - len(bad)}/{len(rows)} within {args.atol:g}; largest error "
          f"{max(r['err'] for r in rows):.2e} (jax {jax.__version__}, {jax.default_backend()})")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
