"""A convolution followed by a frozen BatchNorm, differentiated without the BatchNorm's multiply on the big tensors.

A frozen (inference-mode) BatchNorm after a bias-free convolution is a per-channel affine map of the conv output z:
y = (z − μ)·a + β with a = γ / √(σ² + ε) (Flax's own order of operations, so the forward gives the same numbers
as conv → nn.BatchNorm). Differentiated as written, the backward first multiplies the incoming gradient g by a
over the whole activation, and XLA CPU fuses that multiply into the transpose that feeds the kernel gradient's
matrix product; a transpose fused with a multiply runs about 8× slower there than a plain one (a (7200, 256)
float32 transpose: 0.9 ms alone, 7.5 ms with the multiply). In the paper-scale encoder's training graph those
fused transposes were 130 of 980 ms of thunk time (ResNet-101 to layer3, batch 2, 240 px).

`conv_frozen_bn` has its own VJP, which uses the conv's linearity to keep a off the activation-sized tensors:
  dk = conv_kernel_grad(x, g) · a              (the kernel gradient of g itself, scaled per output channel)
  da = Σ k ⊙ conv_kernel_grad(x, g) − μ·Σ g     (= Σ g ⊙ (z − μ), without keeping z)
  dμ = −a · Σ g
  dx = conv_input_grad(g, k · a)               (a folded into the small kernel)
and β's gradient Σ g comes from the plain `+ β` outside. Same values as the plain form; gradients equal up to float
round-off (tests/test_resnet.py). `benchmarks/bench_conv_forms.py --variants all,all-bn` measures it.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

_CONV_DIMS = ("NHWC", "HWIO", "NHWC")


def bias_free_conv(x, kernel, stride: int, precision: Any = None):
    """torch's bias-free Conv2d with symmetric padding k // 2: x (B, H, W, C), kernel (k, k, C, F) ->
    (B, ⌊(H + 2·(k // 2) − k)/s⌋ + 1, ..., F). A 1x1 kernel is a matrix product on the strided input (XLA CPU
    differentiates it faster than a 1x1 convolution; models/resnet.py `Conv1x1`)."""
    k = kernel.shape[0]
    if k == 1:
        if stride != 1:
            x = x[:, ::stride, ::stride, :]
        return jnp.einsum("bhwc,cf->bhwf", x, kernel[0, 0], precision=precision)
    pad = k // 2
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), ((pad, pad), (pad, pad)),
                                        dimension_numbers=_CONV_DIMS, precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def conv_frozen_bn(x, kernel, scale, mean, stride: int, precision: Any = None):
    """(bias_free_conv(x, kernel) − mean) · scale: a conv and a frozen BatchNorm's normalisation (add β after).

    x (B, H, W, C), kernel (k, k, C, F), scale and mean (F,) -> (B, h, w, F). scale = γ / √(σ² + ε).
    """
    return (bias_free_conv(x, kernel, stride, precision) - mean) * scale


def _conv_frozen_bn_fwd(x, kernel, scale, mean, stride, precision):
    return conv_frozen_bn(x, kernel, scale, mean, stride, precision), (x, kernel, scale, mean)


def _conv_frozen_bn_bwd(stride, precision, residuals, g):
    x, kernel, scale, mean = residuals
    dx = jax.vjp(lambda v: bias_free_conv(v, kernel * scale, stride, precision), x)[1](g)[0]
    kernel_grad = jax.vjp(lambda k: bias_free_conv(x, k, stride, precision), kernel)[1](g)[0]
    g_sum = jnp.sum(g, axis=(0, 1, 2))
    dscale = jnp.sum(kernel * kernel_grad, axis=(0, 1, 2)) - mean * g_sum
    return dx, kernel_grad * scale, dscale, -scale * g_sum


conv_frozen_bn.defvjp(_conv_frozen_bn_fwd, _conv_frozen_bn_bwd)
