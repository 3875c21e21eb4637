"""Value and gradient norm of every MaCoSNet loss at initialisation, and encoder passes per triplet step.

Random triplets (batch 4, 64x64, thin ResNet-18 width 16 cut at layer3 -> 4x4 correlation), heads initialised
at the identity; the perceptual network F is a frozen copy of the model's own encoder with global average
pooling (SPEC §6.4's CPU option), its weights behind stop_gradient. Prints one table row per loss term:
unweighted value and the L2 norm of its gradient with respect to all model parameters, split into encoder,
regressors and decoder; then the image-level encoder passes per triplet step against the reference's 9, and
the time of one jitted value-and-grad of the full objective.

    .venv/bin/python benchmarks/bench_losses.py [--batch 4] [--size 64]
"""
from __future__ import annotations

import argparse
import time

import flax.linen as nn
import jax
import jax.numpy as jnp

from macosnet_jax import losses
from macosnet_jax.models import macosnet as M
from macosnet_jax.models.resnet import ResNet

TERMS = ("matching", "cycle", "transitivity", "contrastive", "task")


def _norm(tree) -> float:
    return float(jnp.sqrt(sum(jnp.sum(x ** 2) for x in jax.tree_util.tree_leaves(tree))))


def count_encoder_passes(model, variables, images) -> int:
    """Images through the encoder in one triplet step (traced, not run)."""
    seen = []

    def interceptor(next_fun, args, kwargs, context):
        if isinstance(context.module, ResNet) and context.method_name == "__call__":
            seen.append(args[0].shape[0])
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
        jax.eval_shape(lambda v: model.apply(v, *images, train=True, method=M.MaCoSNet.triplet,
                                             mutable=["batch_stats"]), variables)
    return sum(seen) // images[0].shape[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()

    model = M.build_macosnet(depth=18, last_layer="layer3", width=16, image_size=args.size,
                             regression_channels=(16, 8), regression_kernels=(3, 2), init_identity=True)
    variables = M.init_macosnet(model, jax.random.key(0, impl="rbg"), args.batch)
    keys = jax.random.split(jax.random.PRNGKey(1), 3)
    images = [jax.random.normal(k, (args.batch, args.size, args.size, 3)) for k in keys]

    def objective(params, weights):
        frozen = jax.lax.stop_gradient(variables)

        def descriptor(x):
            feats = model.apply(frozen, x, method=lambda m, x: m.matching.encode(x, False)["features"])
            return jnp.mean(feats, axis=(1, 2))

        outputs, _ = model.apply({**variables, "params": params}, *images, train=True,
                                 method=M.MaCoSNet.triplet, mutable=["batch_stats"])
        return losses.total_loss(outputs, weights, images={"a": images[0], "b": images[1]},
                                 descriptor_fn=descriptor)

    @jax.jit
    def per_term(params):
        return {name: jax.value_and_grad(lambda p: objective(p, {name: 1.0})[0])(params) for name in TERMS}

    t0 = time.perf_counter()
    results = jax.block_until_ready(per_term(variables["params"]))
    compile_s = time.perf_counter() - t0

    print(f"MaCoSNet losses at init: batch {args.batch}, {args.size}x{args.size}, ResNet-18 width 16 (layer3), "
          f"backend {jax.default_backend()}")
    print(f"{'term':<13} {'value':>11} {'|grad|':>11} {'|g| enc':>11} {'|g| aff':>11} {'|g| tps':>11} {'|g| dec':>11}")
    for name, (value, grad) in results.items():
        m = grad["matching"]
        print(f"{name:<13} {float(value):11.4g} {_norm(grad):11.4g} {_norm(m['encoder']):11.4g} "
              f"{_norm(m['affine_regression']):11.4g} {_norm(m['tps_regression']):11.4g} "
              f"{_norm(grad['decoder']):11.4g}")

    passes = count_encoder_passes(model, variables, images)
    print(f"encoder passes per triplet step: {passes} (reference: {M.REFERENCE_ENCODER_PASSES_PER_TRIPLET})")

    step = jax.jit(jax.value_and_grad(lambda p: objective(p, losses.DEFAULT_WEIGHTS)[0]))
    t0 = time.perf_counter()
    jax.block_until_ready(step(variables["params"]))
    step_compile = time.perf_counter() - t0
    t0 = time.perf_counter()
    n = 3
    for _ in range(n):
        jax.block_until_ready(step(variables["params"]))
    print(f"full objective value+grad: {(time.perf_counter() - t0) / n * 1e3:.0f} ms/step "
          f"(compile+first {step_compile:.1f} s; per-term table compile+run {compile_s:.1f} s)")


if __name__ == "__main__":
    main()
