"""ResNet v1.5 encoder in torchvision's layout, truncatable after any stage, returning the skips.

Why torchvision's layout exactly: the matching checkpoints we import (weakalign, CNNGeo) and the ImageNet
weights are torchvision ResNets, so the stride sits on the 3x3 conv of each bottleneck (v1.5), paddings are
torch's explicit symmetric pads (not 'SAME', which pads asymmetrically for stride 2 and shifts every feature
by half a pixel), and max-pool pads with -inf.

Submodule names mirror torch names so weight import is a rename: `conv1`, `bn1`, `layer{L}_{i}` with
`conv1..conv3`, `bn1..bn3`, `downsample_conv`, `downsample_bn` (torch `layer{L}.{i}.downsample.{0,1}`).

The encoder returns a dict of activations (B, H, W, C): 'stem' (ReLU output before max-pool, stride 2),
'layer1'..'last_layer' and 'features' (= the last one). SPEC §2: ResNet-101 to layer3 gives 1024 channels
at stride 16 (15x15 for 240x240 input); the decoder reads 'stem', 'layer1', 'layer2' as skips.
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from macosnet_jax.models import frozen_bn

# depth -> (block kind, blocks per layer). torchvision's table.
RESNET_CONFIGS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
LAYER_NAMES = ("stem", "layer1", "layer2", "layer3", "layer4")
BN_EPSILON = 1e-5
# torch momentum 0.1 weighs the NEW batch by 0.1; flax momentum weighs the OLD running value.
BN_MOMENTUM = 0.9


def block_expansion(depth: int) -> int:
    """Output channels / inner width of a block: 1 for BasicBlock (18/34), 4 for Bottleneck (50+)."""
    return 1 if RESNET_CONFIGS[depth][0] == "basic" else 4


def output_channels(depth: int, last_layer: str, width: int = 64) -> int:
    """Channel count of the encoder's 'features' output for a config."""
    if last_layer == "stem":
        return width
    level = LAYER_NAMES.index(last_layer)
    return width * 2 ** (level - 1) * block_expansion(depth)


def torch_module_name(parts) -> str:
    """Flax module path -> torchvision module name: ('layer2_0', 'downsample_bn') -> 'layer2.0.downsample.1'."""
    if parts[0] in ("conv1", "bn1"):
        return parts[0]
    layer, index = parts[0].split("_")
    sub = {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}.get(parts[1], parts[1])
    return f"{layer}.{index}.{sub}"


class Conv1x1(nn.Module):
    """Bias-free 1x1 conv with stride, as `nn.Conv(features, (1, 1), strides)`'s parameters (kernel (1, 1, C, F)),
    computed as a matrix product on the strided input: (B, H, W, C) -> (B, ceil(H/s), ceil(W/s), F).

    Why not nn.Conv: in the training graph XLA CPU runs the weight gradients of 1x1 convolutions through
    transposes fused with recomputed activations; as an einsum the paper-scale training step is several times
    faster (benchmarks/bench_conv_forms.py), with the same numbers up to float round-off.
    """
    features: int
    stride: int = 1
    precision: Any = None

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (1, 1, x.shape[-1], self.features),
                            jnp.float32)
        if self.stride != 1:
            x = x[:, ::self.stride, ::self.stride, :]
        return jnp.einsum("bhwc,cf->bhwf", x, kernel[0, 0], precision=self.precision)


_CONV_DIMS = ("NHWC", "HWIO", "NHWC")


def _strided_conv(x, kernel, pad: int, precision):
    return jax.lax.conv_general_dilated(x, kernel, (2, 2), ((pad, pad), (pad, pad)), dimension_numbers=_CONV_DIMS,
                                        precision=precision)


def space_to_depth_kernel(kernel):
    """A stride-2 conv's kernel (k, k, C, F) as the kernel of the stride-1 conv over the input's 2x2 pixel blocks:
    (m, m, 4C, F), m = ⌈k/2⌉, zero-padded to an even size; block channel (2a + b)·C + c is pixel (2y + a, 2x + b)."""
    k, _, c, f = kernel.shape
    m = (k + 1) // 2
    padded = jnp.pad(kernel, ((0, 2 * m - k), (0, 2 * m - k), (0, 0), (0, 0)))
    return padded.reshape(m, 2, m, 2, c, f).transpose(0, 2, 1, 3, 4, 5).reshape(m, m, 4 * c, f)


def _strided_conv_input_grad(g, kernel, input_hw, pad: int, precision):
    """The input gradient of `_strided_conv`: g (B, oh, ow, F) -> (B, H, W, C).

    The stride-2 conv is the stride-1 conv of `space_to_depth_kernel` over the padded input's 2x2 blocks, so its
    adjoint is one stride-1 full correlation of g with that kernel flipped (F -> 4C channels), put back from
    blocks to pixels and cropped to the unpadded input.
    """
    b, oh, ow, _ = g.shape
    k, _, c, _ = kernel.shape
    m = (k + 1) // 2
    flipped = jnp.flip(space_to_depth_kernel(kernel), (0, 1)).transpose(0, 1, 3, 2)  # (m, m, F, 4C)
    blocks = jax.lax.conv_general_dilated(g, flipped, (1, 1), ((m - 1, m - 1), (m - 1, m - 1)),
                                          dimension_numbers=_CONV_DIMS, precision=precision)
    bh, bw = oh + m - 1, ow + m - 1
    pixels = blocks.reshape(b, bh, bw, 2, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, 2 * bh, 2 * bw, c)
    h, w = input_hw
    pixels = jnp.pad(pixels, ((0, 0), (0, max(0, h + pad - 2 * bh)), (0, max(0, w + pad - 2 * bw)), (0, 0)))
    return pixels[:, pad:pad + h, pad:pad + w, :]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def stem_conv(x, kernel, pad: int, precision: Any = None):
    """Bias-free stride-2 conv with symmetric padding `pad` (torch's stem conv1): x (B, H, W, C), kernel (k, k, C, F)
    -> (B, ⌊(H + 2·pad - k)/2⌋ + 1, ⌊(W + 2·pad - k)/2⌋ + 1, F).

    The same values as the plain strided convolution, and the same gradients up to float round-off. Why a VJP of
    its own: the input gradient (needed where images depend on parameters: warped images in the cascade, masked
    images in the perceptual loss) is a transposed convolution, which XLA CPU runs as a zero-dilated convolution
    over 3 output channels, several times slower than the stride-1 form used here (`_strided_conv_input_grad`;
    the demo's joint step, benchmarks/bench_conv_forms.py). Forward and kernel gradient are XLA's own.
    """
    return _strided_conv(x, kernel, pad, precision)


def _stem_conv_fwd(x, kernel, pad, precision):
    return _strided_conv(x, kernel, pad, precision), (x, kernel)


def _stem_conv_bwd(pad, precision, residuals, g):
    x, kernel = residuals
    dx = _strided_conv_input_grad(g, kernel, x.shape[1:3], pad, precision)
    dkernel = jax.vjp(lambda k: _strided_conv(x, k, pad, precision), kernel)[1](g)[0]
    return dx, dkernel


stem_conv.defvjp(_stem_conv_fwd, _stem_conv_bwd)


class StemConv(nn.Module):
    """`nn.Conv(features, (k, k), strides=2, padding=k // 2, use_bias=False)`'s parameters, computed by
    `stem_conv` (its own input gradient)."""
    features: int
    kernel_size: int = 7
    precision: Any = None

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.initializers.lecun_normal(),
                            (self.kernel_size, self.kernel_size, x.shape[-1], self.features), jnp.float32)
        return stem_conv(x, kernel, self.kernel_size // 2, self.precision)


def _conv(features: int, kernel: int, stride: int, name: str, precision: Any = None) -> nn.Module:
    """Bias-free conv with torch's symmetric padding kernel // 2 (1x1: `Conv1x1`, same parameters)."""
    if kernel == 1:
        return Conv1x1(features, stride, precision=precision, name=name)
    pad = kernel // 2
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
                   use_bias=False, name=name, precision=precision)


def _bn(use_running_average: bool, name: str, scale_init=nn.initializers.ones) -> nn.BatchNorm:
    return nn.BatchNorm(use_running_average=use_running_average, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                        scale_init=scale_init, name=name)


class ConvKernel(nn.Module):
    """The parameter 'kernel' (k, k, C, F) of a bias-free conv, with nn.Conv's (and Conv1x1's) name, shape and init."""
    shape: tuple

    @nn.compact
    def __call__(self):
        return self.param("kernel", nn.initializers.lecun_normal(), self.shape, jnp.float32)


class FrozenBatchNorm(nn.Module):
    """nn.BatchNorm's variables (params 'scale', 'bias'; batch_stats 'mean', 'var'; the same inits), used in
    inference mode only: returns (a, μ, β) with BN(z) = (z − μ)·a + β, a = scale / √(var + ε)."""

    @nn.compact
    def __call__(self, features: int):
        scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
        mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((features,), jnp.float32)).value
        var = self.variable("batch_stats", "var", lambda: jnp.ones((features,), jnp.float32)).value
        return jax.lax.rsqrt(var + BN_EPSILON) * scale, mean, bias


def conv_bn(x, features: int, kernel: int, stride: int, use_running_average: bool, precision: Any,
            conv_name: str, bn_name: str):
    """Bias-free conv (torch padding) `conv_name` -> BatchNorm `bn_name`: (B, H, W, C) -> (B, h, w, features).

    With frozen BatchNorm (use_running_average) one `frozen_bn.conv_frozen_bn`, whose gradients keep the
    BatchNorm's scale off the activation-sized tensors (XLA CPU runs the paper-scale training step faster); the
    same variables (conv kernel; BN scale, bias, mean, var) and values either way.
    """
    if not use_running_average:
        return _bn(False, bn_name)(_conv(features, kernel, stride, conv_name, precision)(x))
    weights = ConvKernel((kernel, kernel, x.shape[-1], features), name=conv_name)()
    scale, mean, bias = FrozenBatchNorm(name=bn_name)(features)
    return frozen_bn.conv_frozen_bn(x, weights, scale, mean, stride, precision) + bias


class BasicBlock(nn.Module):
    """torchvision BasicBlock: 3x3 (stride) -> BN -> ReLU -> 3x3 -> BN, + shortcut, ReLU."""
    width: int
    stride: int = 1
    downsample: bool = False
    use_running_average: bool = True
    precision: Any = None

    @nn.compact
    def __call__(self, x):
        frozen, precision = self.use_running_average, self.precision
        y = nn.relu(conv_bn(x, self.width, 3, self.stride, frozen, precision, "conv1", "bn1"))
        y = conv_bn(y, self.width, 3, 1, frozen, precision, "conv2", "bn2")
        if self.downsample:
            x = conv_bn(x, self.width, 1, self.stride, frozen, precision, "downsample_conv", "downsample_bn")
        return nn.relu(x + y)


class Bottleneck(nn.Module):
    """torchvision Bottleneck (v1.5): 1x1 -> 3x3 (stride) -> 1x1 (4x width), BN after each, + shortcut."""
    width: int
    stride: int = 1
    downsample: bool = False
    use_running_average: bool = True
    precision: Any = None

    @nn.compact
    def __call__(self, x):
        frozen, precision = self.use_running_average, self.precision
        y = nn.relu(conv_bn(x, self.width, 1, 1, frozen, precision, "conv1", "bn1"))
        y = nn.relu(conv_bn(y, self.width, 3, self.stride, frozen, precision, "conv2", "bn2"))
        y = conv_bn(y, self.width * 4, 1, 1, frozen, precision, "conv3", "bn3")
        if self.downsample:
            x = conv_bn(x, self.width * 4, 1, self.stride, frozen, precision, "downsample_conv", "downsample_bn")
        return nn.relu(x + y)


# The 3x3 window's taps (row, column) in row-major order: the order in which torch's max-pool backward (and XLA's
# select-and-scatter) look for the first maximum.
_POOL_TAPS = tuple((i, j) for i in range(3) for j in range(3))


def _pool_phases(x):
    """x (B, H, W, C) padded with -inf to (2·oh + 2, 2·ow + 2) and split into stride-2 phases:
    (B, oh + 1, 2, ow + 1, 2, C) with oh, ow = ceil(H / 2), ceil(W / 2). Padded row 2r + a is [:, r, a]."""
    b, h, w, c = x.shape
    oh, ow = (h + 1) // 2, (w + 1) // 2
    xp = jnp.pad(x, ((0, 0), (1, 2 * oh + 1 - h), (1, 2 * ow + 1 - w), (0, 0)), constant_values=-jnp.inf)
    return xp.reshape(b, oh + 1, 2, ow + 1, 2, c)


def _pool_tap(phases, i: int, j: int):
    """Window tap (i, j) of every output: padded pixel (2y + i, 2x + j) -> (B, oh, ow, C), a plain slice."""
    oh, ow = phases.shape[1] - 1, phases.shape[3] - 1
    return phases[:, i // 2:i // 2 + oh, i % 2, j // 2:j // 2 + ow, j % 2, :]


def _pool_forward(x):
    phases = _pool_phases(x)
    y = _pool_tap(phases, 0, 0)
    for i, j in _POOL_TAPS[1:]:
        y = jnp.maximum(y, _pool_tap(phases, i, j))
    return y


@jax.custom_vjp
def max_pool_3x3_s2(x):
    """torch MaxPool2d(3, 2, padding=1) (pads with -inf, so the pad never wins): (B, H, W, C) -> (B, ⌈H/2⌉, ⌈W/2⌉, C).

    The same values as `nn.max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)))`, and the same gradient: each output's
    gradient goes to the first maximum of its window in row-major order (torch's and XLA's rule for ties). Why
    not nn.max_pool: XLA CPU runs its backward (select-and-scatter) several times slower than the demo's
    convolutions around it. Here the stride-2 windows are plain slices of four phase arrays: the forward is a
    chain of maxima (under differentiation one reduction that also records each window's first-maximum tap, int8),
    and the backward routes the gradient by that tap with selects and pads (benchmarks/bench_conv_forms.py).
    """
    return _pool_forward(x)


def _first_max(a, b):
    """Reducer of (value, tap) pairs: the larger value, the earlier tap among equal values."""
    (a_value, a_tap), (b_value, b_tap) = a, b
    keep_a = (a_value > b_value) | ((a_value == b_value) & (a_tap < b_tap))
    return jnp.where(keep_a, a_value, b_value), jnp.where(keep_a, a_tap, b_tap)


def _max_pool_fwd(x):
    # One variadic reduction over the nine taps gives each window's maximum and the tap (0..8) of its first
    # maximum. As a reduction XLA computes it once: a chain of compare-selects would be fused into the backward
    # and recomputed for every pixel that reads the window (up to four).
    phases = _pool_phases(x)
    taps = jnp.stack([_pool_tap(phases, i, j) for i, j in _POOL_TAPS], axis=0)
    tap_index = jax.lax.broadcasted_iota(jnp.int8, taps.shape, 0)
    init = (jnp.array(-jnp.inf, x.dtype), jnp.array(0, jnp.int8))
    y, first = jax.lax.reduce((taps, tap_index), init, _first_max, (0,))
    return y, (first, x.shape)


def _max_pool_bwd(residuals, g):
    first, (b, h, w, c) = residuals
    sums = {}
    for k, (i, j) in enumerate(_POOL_TAPS):
        # Back onto its phase array (B, oh + 1, ow + 1, C): tap row i of output row y is phase row y + i // 2.
        part = jnp.pad(jnp.where(first == k, g, 0.0), ((0, 0), (i // 2, 1 - i // 2), (j // 2, 1 - j // 2), (0, 0)))
        key = (i % 2, j % 2)
        sums[key] = part if key not in sums else sums[key] + part
    rows = [jnp.stack([sums[(a, 0)], sums[(a, 1)]], axis=3) for a in (0, 1)]  # (B, oh + 1, ow + 1, 2, C)
    oh, ow = first.shape[1:3]
    padded = jnp.stack(rows, axis=2).reshape(b, 2 * oh + 2, 2 * ow + 2, c)
    return (padded[:, 1:1 + h, 1:1 + w, :],)


max_pool_3x3_s2.defvjp(_max_pool_fwd, _max_pool_bwd)


def runtime_one(kernel):
    """1.0 as a value computed at run time from a parameter (sign(1 + |w|) for one weight w), without a gradient.

    For `materialized`: a literal 1.0 would be folded away at compile time. NaN only if that weight is NaN."""
    return jax.lax.stop_gradient(jnp.sign(1.0 + jnp.abs(kernel.reshape(-1)[0])))


def materialized(x, one):
    """x / one with `one` = `runtime_one(...)`: the same values (and gradients), computed once.

    Why: XLA CPU fuses each residual block's output (BatchNorm affine, add, ReLU) into every consumer and
    recomputes it there, down the whole residual stream, so layer3's last blocks recompute twenty blocks'
    elementwise work (fusions with 70 operands; their time grows quadratically with depth). XLA does not
    duplicate a division into its consumers, so dividing each block's output by a 1.0 it cannot fold keeps the
    output a buffer computed once: the ResNet-101 forward at batch 8 (240 px) 614 -> 502 ms, batch 1 81 -> 72 ms,
    the encoder's forward and backward at batch 2 567 -> 540 ms, bit-identical outputs.
    """
    return x / one


def global_pool_features(x):
    """Global average pool (B, H, W, C) -> (B, C): the perceptual descriptor F of SPEC §6.4."""
    return jnp.mean(x, axis=(1, 2))


class ResNet(nn.Module):
    """ResNet v1.5 (torchvision layout) truncated after `last_layer`.

    Attributes:
      depth: 18, 34, 50, 101 or 152.
      last_layer: 'stem' | 'layer1' | 'layer2' | 'layer3' | 'layer4'.
      width: stem width; layer widths are width * (1, 2, 4, 8) (64 = torchvision; smaller for CPU demos).
      update_batch_stats: BatchNorm uses (and updates) batch statistics iff this AND `train` are true. SPEC §2
        freezes the encoder's running statistics during weak training, hence the default False.
      precision: conv precision (None = backend default; 'highest' for parity on accelerators).
    """
    depth: int = 101
    last_layer: str = "layer3"
    width: int = 64
    update_batch_stats: bool = False
    precision: Any = None

    def _check_config(self):
        if self.depth not in RESNET_CONFIGS:
            raise ValueError(f"ResNet depth must be one of {sorted(RESNET_CONFIGS)}, got {self.depth}")
        if self.last_layer not in LAYER_NAMES:
            raise ValueError(f"ResNet last_layer must be one of {LAYER_NAMES}, got {self.last_layer!r}")

    @nn.compact
    def __call__(self, x, train: bool = False) -> dict:
        """x: (B, H, W, 3) normalised images -> dict of (B, h, w, c) activations (see module docstring)."""
        self._check_config()
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"ResNet expects images (B, H, W, 3), got shape {x.shape}")
        use_running_average = not (train and self.update_batch_stats)
        kind, blocks = RESNET_CONFIGS[self.depth]
        block_cls = BasicBlock if kind == "basic" else Bottleneck
        expansion = block_expansion(self.depth)

        stem_conv_module = StemConv(self.width, 7, self.precision, name="conv1")
        x = stem_conv_module(x)
        one = runtime_one(stem_conv_module.variables["params"]["kernel"])
        x = nn.relu(_bn(use_running_average, "bn1")(x))
        out = {"stem": x}
        last = LAYER_NAMES.index(self.last_layer)
        if last > 0:
            x = max_pool_3x3_s2(x)
        in_channels = self.width
        for level in range(1, last + 1):
            layer_width = self.width * 2 ** (level - 1)
            for i in range(blocks[level - 1]):
                stride = 2 if (i == 0 and level > 1) else 1
                downsample = i == 0 and (stride != 1 or in_channels != layer_width * expansion)
                x = materialized(block_cls(layer_width, stride, downsample, use_running_average, self.precision,
                                           name=f"layer{level}_{i}")(x), one)
                in_channels = layer_width * expansion
            out[f"layer{level}"] = x
        out["features"] = x
        return out
