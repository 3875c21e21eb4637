"""DINOv2 Vision Transformer encoder (facebookresearch/dinov2's `DinoVisionTransformer`), NHWC, in Flax.

Behaviour follows the official backbone so that its released checkpoints load unchanged
(`macosnet_jax.weights.load_dinov2`); the conventions are pinned in `tests/fixtures/dinov2/README.md`:

* images (B, H, W, 3) ImageNet-normalised, H and W multiples of the patch size 14; h, w = H/14, W/14; N = h·w.
* tokens `[cls, reg_1..reg_R, patch_0..patch_{N-1}]` (patches row-major over the (h, w) grid); the positional
  embedding is added to `[cls, patches]` before the R register tokens are inserted (registers get none).
* positional embedding: the stored (1 + M², D) table is used as is iff N == M² and H == W; otherwise its M×M grid is
  resized to (h, w) in float32 as torch's `F.interpolate(mode='bicubic')` does: the non-register hub models pass
  `scale_factor = ((h + 0.1)/M, (w + 0.1)/M)` without antialiasing (`bicubic_matrix`, Keys a = -0.75, taps clamped
  to the border, source index `(i + 0.5)·M/(h + 0.1) - 0.5`); the `_reg` models pass `size=(h, w)` with
  antialiasing, which `jax.image.resize(..., 'cubic', antialias=True)` reproduces.
* pre-norm blocks: x += ls1 ⊙ attn(norm1(x)); x += ls2 ⊙ ffn(norm2(x)); LayerNorm eps 1e-6; exact-erf GELU MLP
  (or SwiGLU for the giant size); attention softmax(q kᵀ / √head_dim) v with qkv rows [q | k | v], head-major.

Parameter names mirror the torch state_dict: `cls_token`, `pos_embed`, `mask_token`, `register_tokens`,
`patch_embed` (Conv), `blocks_{i}` / {`norm1`, `attn` / {`qkv`, `proj`}, `ls1`, `norm2`, `mlp` / {`fc1`, `fc2`} or
{`w12`, `w3`}, `ls2`}, `norm`.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

PATCH_SIZE = 14
LAYERNORM_EPS = 1e-6
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# name -> (embed_dim, depth, num_heads, ffn): the official hub sizes, plus a tiny one for tests and CPU configs.
SIZES = {
    "tiny": (48, 3, 3, "mlp"),
    "small": (384, 12, 6, "mlp"),
    "base": (768, 12, 12, "mlp"),
    "large": (1024, 24, 16, "mlp"),
    "giant": (1536, 40, 24, "swiglu"),
}


def _cubic_weights(t: np.ndarray, a: float = -0.75) -> np.ndarray:
    """Keys cubic weights of the 4 taps (x0-1 .. x0+2) for fractional offsets t (n,) -> (n, 4), as torch."""
    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1
    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


def bicubic_matrix(n_in: int, n_out: int, offset: float = 0.1) -> np.ndarray:
    """(n_out, n_in) float64 matrix of torch's bicubic resize (align_corners=False, no antialias) along one axis.

    offset > 0: the scale-factor call of the official code, scale_factor = (n_out + offset) / n_in, so output i
    reads source (i + 0.5)·n_in/(n_out + offset) - 0.5; offset == 0: the size call (source (i + 0.5)·n_in/n_out - 0.5).
    Source positions are computed in float32 like torch's CPU kernel.
    """
    if offset:
        scale = np.float32(1.0 / ((n_out + offset) / n_in))
    else:
        scale = np.float32(n_in / n_out)
    src = scale * (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5)
    x0 = np.floor(src)
    weights = _cubic_weights((src - x0).astype(np.float64))
    matrix = np.zeros((n_out, n_in))
    for k in range(4):
        idx = np.clip(x0.astype(np.int64) - 1 + k, 0, n_in - 1)
        np.add.at(matrix, (np.arange(n_out), idx), weights[:, k])
    return matrix


def interpolate_pos_embed(pos_embed: jax.Array, height: int, width: int, offset: float = 0.1,
                          antialias: bool = False, patch_size: int = PATCH_SIZE) -> jax.Array:
    """The official `interpolate_pos_encoding`: pos_embed (1, 1 + M², D) -> (1, 1 + h·w, D) for an H×W image.

    Skipped (the table itself is returned) iff h·w == M² and H == W; the cls position is never changed.
    """
    n_stored = pos_embed.shape[1] - 1
    h, w = height // patch_size, width // patch_size
    if h * w == n_stored and height == width:
        return pos_embed
    m = int(round(math.sqrt(n_stored)))
    if m * m != n_stored:
        raise ValueError(f"pos_embed: {n_stored} stored patch positions are not a square grid")
    dtype = pos_embed.dtype
    grid = pos_embed[0, 1:].astype(jnp.float32).reshape(m, m, -1)
    if antialias:
        if offset:
            raise ValueError("pos_embed: antialiased interpolation is implemented for the size call (offset 0) only")
        grid = jax.image.resize(grid, (h, w, grid.shape[-1]), "cubic", antialias=True)
    else:
        rows = jnp.asarray(bicubic_matrix(m, h, offset), jnp.float32)
        cols = jnp.asarray(bicubic_matrix(m, w, offset), jnp.float32)
        grid = jnp.einsum("hm,mnd,wn->hwd", rows, grid, cols, precision="highest")
    patches = grid.reshape(1, h * w, -1).astype(dtype)
    return jnp.concatenate([pos_embed[:, :1], patches], axis=1)


class LayerScale(nn.Module):
    """x (..., D) * gamma (D,)."""
    init_values: float = 1.0

    @nn.compact
    def __call__(self, x):
        gamma = self.param("gamma", nn.initializers.constant(self.init_values), (x.shape[-1],))
        return x * gamma


class Attention(nn.Module):
    """Multi-head self-attention, x (B, T, D) -> (B, T, D)."""
    num_heads: int
    precision: Any = "highest"

    @nn.compact
    def __call__(self, x):
        b, t, d = x.shape
        head_dim = d // self.num_heads
        qkv = nn.Dense(3 * d, precision=self.precision, name="qkv")(x).reshape(b, t, 3, self.num_heads, head_dim)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # (B, T, heads, head_dim)
        logits = jnp.einsum("bqhc,bkhc->bhqk", q * head_dim ** -0.5, k, precision=self.precision)
        weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
        out = jnp.einsum("bhqk,bkhc->bqhc", weights, v, precision=self.precision).reshape(b, t, d)
        return nn.Dense(d, precision=self.precision, name="proj")(out)


class Mlp(nn.Module):
    """fc1 -> exact GELU -> fc2, (..., D) -> (..., D)."""
    hidden: int
    precision: Any = "highest"

    @nn.compact
    def __call__(self, x):
        y = nn.Dense(self.hidden, precision=self.precision, name="fc1")(x)
        y = jax.nn.gelu(y, approximate=False)
        return nn.Dense(x.shape[-1], precision=self.precision, name="fc2")(y)


class SwiGLU(nn.Module):
    """w12 -> silu(x1)·x2 -> w3 (the giant model's FFN; hidden = 8-rounded 2/3 of mlp_ratio·D)."""
    hidden: int
    precision: Any = "highest"

    @nn.compact
    def __call__(self, x):
        x1, x2 = jnp.split(nn.Dense(2 * self.hidden, precision=self.precision, name="w12")(x), 2, axis=-1)
        return nn.Dense(x.shape[-1], precision=self.precision, name="w3")(jax.nn.silu(x1) * x2)


def ffn_hidden(embed_dim: int, mlp_ratio: float, ffn: str) -> int:
    """Hidden width of the block's FFN, as the official code sizes it."""
    hidden = int(embed_dim * mlp_ratio)
    return (int(hidden * 2 / 3) + 7) // 8 * 8 if ffn == "swiglu" else hidden


class Block(nn.Module):
    """Pre-norm transformer block with LayerScale, (B, T, D) -> (B, T, D)."""
    num_heads: int
    hidden: int
    ffn: str = "mlp"
    layerscale: bool = True
    precision: Any = "highest"

    @nn.compact
    def __call__(self, x):
        ln = dict(epsilon=LAYERNORM_EPS)
        y = Attention(self.num_heads, self.precision, name="attn")(nn.LayerNorm(**ln, name="norm1")(x))
        x = x + (LayerScale(name="ls1")(y) if self.layerscale else y)
        ffn = SwiGLU if self.ffn == "swiglu" else Mlp
        y = ffn(self.hidden, self.precision, name="mlp")(nn.LayerNorm(**ln, name="norm2")(x))
        return x + (LayerScale(name="ls2")(y) if self.layerscale else y)


class DinoV2(nn.Module):
    """DINOv2 ViT. `__call__(images, masks=None)` is the official `forward_features`.

    Attributes:
      embed_dim, depth, num_heads: size (see SIZES); mlp_ratio, ffn ('mlp' | 'swiglu'): the blocks' FFN.
      num_registers: register tokens R (0 or 4 for the hub models).
      pos_grid: M, the stored positional grid (hub: 37 = 518/14).
      interpolate_offset, interpolate_antialias: the pos-embed resize call (hub: 0.1/False; `_reg`: 0.0/True).
      layerscale: LayerScale gammas (all hub models).
      precision: matmul precision ('highest' for float32 parity on accelerators).
    """
    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    ffn: str = "mlp"
    num_registers: int = 0
    pos_grid: int = 37
    interpolate_offset: float = 0.1
    interpolate_antialias: bool = False
    layerscale: bool = True
    precision: Any = "highest"

    def setup(self):
        d = self.embed_dim
        normal = nn.initializers.normal(0.02)
        self.cls_token = self.param("cls_token", normal, (1, 1, d))
        self.pos_embed = self.param("pos_embed", normal, (1, 1 + self.pos_grid ** 2, d))
        self.mask_token = self.param("mask_token", nn.initializers.zeros, (1, d))
        if self.num_registers:
            self.register_tokens = self.param("register_tokens", normal, (1, self.num_registers, d))
        self.patch_embed = nn.Conv(d, (PATCH_SIZE, PATCH_SIZE), strides=(PATCH_SIZE, PATCH_SIZE), padding="VALID",
                                   precision=self.precision)
        hidden = ffn_hidden(d, self.mlp_ratio, self.ffn)
        self.blocks = [Block(self.num_heads, hidden, self.ffn, self.layerscale, self.precision, name=f"blocks_{i}")
                       for i in range(self.depth)]
        self.norm = nn.LayerNorm(epsilon=LAYERNORM_EPS)

    def prepare_tokens(self, images: jax.Array, masks: jax.Array | None = None) -> jax.Array:
        """images (B, H, W, 3), masks (B, N) bool or None -> tokens (B, 1 + R + N, D)."""
        b, height, width, _ = images.shape
        if images.ndim != 4 or height % PATCH_SIZE or width % PATCH_SIZE:
            raise ValueError(f"DinoV2: images must be (B, H, W, 3) with H, W multiples of {PATCH_SIZE}; "
                             f"got {images.shape}")
        x = self.patch_embed(images)
        x = x.reshape(b, -1, self.embed_dim)
        if masks is not None:
            x = jnp.where(masks[..., None], self.mask_token[None].astype(x.dtype), x)
        x = jnp.concatenate([jnp.broadcast_to(self.cls_token, (b, 1, self.embed_dim)).astype(x.dtype), x], axis=1)
        x = x + interpolate_pos_embed(self.pos_embed, height, width, self.interpolate_offset,
                                      self.interpolate_antialias).astype(x.dtype)
        if self.num_registers:
            regs = jnp.broadcast_to(self.register_tokens, (b, self.num_registers, self.embed_dim)).astype(x.dtype)
            x = jnp.concatenate([x[:, :1], regs, x[:, 1:]], axis=1)
        return x

    def __call__(self, images: jax.Array, masks: jax.Array | None = None) -> dict:
        """images (B, H, W, 3) -> dict of the official `forward_features`, plus the patch feature map:
          x_norm_clstoken (B, D), x_norm_regtokens (B, R, D), x_norm_patchtokens (B, N, D),
          x_prenorm (B, 1 + R + N, D), feature_map (B, h, w, D) = x_norm_patchtokens on the patch grid.
        """
        x = self.prepare_tokens(images, masks)
        for block in self.blocks:
            x = block(x)
        x_norm = self.norm(x)
        r = self.num_registers
        h, w = images.shape[1] // PATCH_SIZE, images.shape[2] // PATCH_SIZE
        patches = x_norm[:, 1 + r:]
        return {"x_norm_clstoken": x_norm[:, 0], "x_norm_regtokens": x_norm[:, 1:1 + r],
                "x_norm_patchtokens": patches, "x_prenorm": x,
                "feature_map": patches.reshape(x.shape[0], h, w, self.embed_dim)}

    def get_intermediate_layers(self, images: jax.Array, n: int | Sequence[int] = 1, reshape: bool = False,
                                return_class_token: bool = False, norm: bool = True) -> tuple:
        """The official `get_intermediate_layers`: the last n blocks' outputs (int n) or those of the listed block
        indices, always in block order. Each entry: patch tokens (B, N, D), or (B, h, w, D) with reshape (NHWC:
        the official (B, D, h, w) transposed); with return_class_token, a pair (patches, cls (B, D)). norm applies
        the final LayerNorm.
        """
        take = set(range(self.depth - n, self.depth)) if isinstance(n, int) else {int(i) for i in n}
        if not take or min(take) < 0 or max(take) >= self.depth:
            raise ValueError(f"get_intermediate_layers: blocks {sorted(take)} outside 0..{self.depth - 1}")
        x = self.prepare_tokens(images)
        outputs = []
        for i, block in enumerate(self.blocks[:max(take) + 1]):
            x = block(x)
            if i in take:
                outputs.append(self.norm(x) if norm else x)
        h, w = images.shape[1] // PATCH_SIZE, images.shape[2] // PATCH_SIZE
        result = []
        for out in outputs:
            patches = out[:, 1 + self.num_registers:]
            if reshape:
                patches = patches.reshape(out.shape[0], h, w, -1)
            result.append((patches, out[:, 0]) if return_class_token else patches)
        return tuple(result)


def torch_module_name(parts: Sequence[str]) -> str:
    """Flax module path inside a DinoV2 -> the official module name ('blocks_0', 'attn', 'qkv' -> 'blocks.0.attn.qkv';
    'patch_embed' -> 'patch_embed.proj'; () -> '', the ViT's own tokens)."""
    parts = list(parts)
    if parts and parts[0].startswith("blocks_"):
        parts[0:1] = ["blocks", parts[0][len("blocks_"):]]
    if parts and parts[0] == "patch_embed":
        parts.insert(1, "proj")
    return ".".join(parts)


class DinoV2Encoder(DinoV2):
    """The DinoV2 as an encoder of the backbone table (models/backbones.py): `module(images, train)` ->
    {'features': (B, h, w, D), 'patches': the same array}, the final-normed patch tokens on the (H/14, W/14) grid.

    Its variables are the DinoV2's own ({'params'} only, no BatchNorm), so an official checkpoint converted by
    `weights.load_dinov2` drops into the encoder unchanged. `train` changes nothing (no dropout, no BatchNorm).
    """

    def __call__(self, images: jax.Array, train: bool = False) -> dict:
        del train
        features = super().__call__(images)["feature_map"]
        return {"features": features, "patches": features}


def dinov2(size: str = "small", num_registers: int = 0, pos_grid: int = 37, **kwargs) -> DinoV2:
    """A DinoV2 of one of SIZES with the hub's interpolation convention (registers -> size call, antialiased)."""
    if size not in SIZES:
        raise ValueError(f"dinov2: size must be one of {sorted(SIZES)}, got {size!r}")
    embed_dim, depth, num_heads, ffn = SIZES[size]
    conv = dict(interpolate_offset=0.0, interpolate_antialias=True) if num_registers else {}
    return DinoV2(embed_dim=embed_dim, depth=depth, num_heads=num_heads, ffn=ffn, num_registers=num_registers,
                  pos_grid=pos_grid, **{**conv, **kwargs})
