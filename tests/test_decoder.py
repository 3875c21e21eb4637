"""Tests of the co-segmentation decoder: the transposed conv against a numpy scatter reference written
from PyTorch's ConvTranspose2d definition, the torch weight import, the bilinear init, and the depth/width
adaptation to the encoder's cut layer."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from macosnet_jax import weights
from macosnet_jax.models import decoder as dec


def torch_conv_transpose_ref(x, w, stride=2, padding=1, output_padding=1):
    """numpy float64 ConvTranspose2d by its scatter definition. x (Ci, h, w), w (Ci, Co, k, k) -> (Co, H, W).

    out[o, y*s + ky - p, x*s + kx - p] += x[c, y, x] * w[c, o, ky, kx];
    H = (h - 1)*s - 2p + k + output_padding (the extra rows only ever receive nothing from below).
    """
    ci, h, wd = x.shape
    _, co, k, _ = w.shape
    full = np.zeros((co, (h - 1) * stride + k + output_padding, (wd - 1) * stride + k + output_padding))
    for y in range(h):
        for xx in range(wd):
            full[:, y * stride:y * stride + k, xx * stride:xx * stride + k] += np.einsum(
                "c,cokl->okl", x[:, y, xx], w)
    out_h = (h - 1) * stride - 2 * padding + k + output_padding
    out_w = (wd - 1) * stride - 2 * padding + k + output_padding
    return full[:, padding:padding + out_h, padding:padding + out_w]


def test_conv_transpose_matches_torch_definition():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 3, 4)).astype(np.float32)   # (Ci, h, w) for the ref, NCHW batch of 2
    w_torch = rng.normal(size=(5, 7, 3, 3)).astype(np.float32)  # (Ci, Co, kh, kw), asymmetric on purpose
    kernel = weights.decoder_variables_from_torch({"deconv1.weight": w_torch}, prefix="", num_stages=1)
    kernel = kernel["params"]["deconv1"]["kernel"]
    out = dec.conv_transpose_2x(jnp.asarray(x.transpose(0, 2, 3, 1)), kernel)
    assert out.shape == (2, 6, 8, 7)
    for b in range(2):
        ref = torch_conv_transpose_ref(x[b].astype(np.float64), w_torch.astype(np.float64))
        np.testing.assert_allclose(np.asarray(out[b]).transpose(2, 0, 1), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape,features", [((2, 5, 3, 4), 7), ((1, 1, 6, 3), 1), ((3, 4, 4, 2), 5)])
def test_conv_transpose_phases_match_the_dilated_conv_and_its_gradients(shape, features):
    # Reference: the lhs-dilated correlation (lax.conv_general_dilated), values and gradients for x and the kernel.
    rng = np.random.default_rng(sum(shape))
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(3, 3, shape[-1], features)), jnp.float32)
    cotangent = jnp.asarray(rng.normal(size=(shape[0], 2 * shape[1], 2 * shape[2], features)), jnp.float32)
    hi = jax.lax.Precision.HIGHEST
    want, want_vjp = jax.vjp(lambda x, k: dec.conv_transpose_2x_dilated(x, k, hi), x, kernel)
    got, got_vjp = jax.vjp(jax.jit(lambda x, k: dec.conv_transpose_2x(x, k, hi)), x, kernel)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    for name, g, w in zip(("x", "kernel"), got_vjp(cotangent), want_vjp(cotangent)):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-4, err_msg=name)


def test_unflipped_kernel_would_fail():
    # Guards the flip in the import: without it an asymmetric kernel gives a different result.
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1, 4, 4, 3)).astype(np.float32)
    w_torch = rng.normal(size=(3, 2, 3, 3)).astype(np.float32)
    wrong = jnp.asarray(w_torch.transpose(2, 3, 0, 1))
    ref = torch_conv_transpose_ref(x[0].transpose(2, 0, 1).astype(np.float64), w_torch.astype(np.float64))
    out = np.asarray(dec.conv_transpose_2x(jnp.asarray(x), wrong))[0].transpose(2, 0, 1)
    assert np.abs(out - ref).max() > 1e-2


def test_bilinear_init_upsamples_channel_mean():
    k = np.asarray(dec.bilinear_kernel_init(None, (3, 3, 4, 2)))
    np.testing.assert_allclose(k[:, :, 1, 0], np.outer([.5, 1, .5], [.5, 1, .5]) / 4)
    # A ramp along x (same on all channels) is upsampled linearly: out[2i] = i, out[2i+1] = i + 0.5 inside.
    h, w = 3, 5
    ramp = np.broadcast_to(np.arange(w, dtype=np.float32)[None, None, :, None], (1, h, w, 4))
    out = np.asarray(dec.conv_transpose_2x(jnp.asarray(ramp), jnp.asarray(k)))
    expected = np.arange(2 * w) / 2.0
    # Last row/column only receives half the kernel (output_padding side); interior rows are exact.
    np.testing.assert_allclose(out[0, 1:-1, :-1, 0], np.broadcast_to(expected[:-1], (2 * h - 2, 2 * w - 1)),
                               atol=1e-6)


def _skips(batch, h, widths, names):
    rng = np.random.default_rng(3)
    return {name: jnp.asarray(rng.normal(size=(batch, h * 2 ** (i + 1), h * 2 ** (i + 1), c)).astype(np.float32))
            for i, (name, c) in enumerate(zip(names, widths))}


def test_decoder_forward_matches_numpy_reference_with_torch_weights():
    """Eval-mode decoder with random torch-layout weights against a numpy float64 pipeline."""
    rng = np.random.default_rng(2)
    b, h, c_feat, c_corr = 2, 3, 6, 9
    widths, names = (8, 5, 4), ("layer2", "layer1", "stem")
    chans = [c_feat + c_corr, *widths, 1]
    sd = {}
    for i in range(4):
        sd[f"Decoder.deconv{i + 1}.weight"] = rng.normal(size=(chans[i], chans[i + 1], 3, 3)).astype(np.float32) * 0.3
        if i < 3:
            n = chans[i + 1]
            sd[f"Decoder.bn{i + 1}.weight"] = rng.uniform(0.6, 1.4, n).astype(np.float32)
            sd[f"Decoder.bn{i + 1}.bias"] = rng.normal(0, 0.1, n).astype(np.float32)
            sd[f"Decoder.bn{i + 1}.running_mean"] = rng.normal(0, 0.1, n).astype(np.float32)
            sd[f"Decoder.bn{i + 1}.running_var"] = rng.uniform(0.6, 1.8, n).astype(np.float32)
    feats = rng.normal(size=(b, h, h, c_feat)).astype(np.float32)
    corr = rng.uniform(size=(b, h, h, c_corr)).astype(np.float32)
    skips = _skips(b, h, widths, names)
    variables = weights.decoder_variables_from_torch(sd)
    model = dec.CosegDecoder(widths=widths, skips=names)
    logits = np.asarray(model.apply(variables, jnp.asarray(feats), jnp.asarray(corr), skips, train=False))
    assert logits.shape == (b, 16 * h, 16 * h, 1)

    for e in range(b):
        x = np.concatenate([feats[e], corr[e]], -1).transpose(2, 0, 1).astype(np.float64)
        for i in range(4):
            x = torch_conv_transpose_ref(x, sd[f"Decoder.deconv{i + 1}.weight"].astype(np.float64))
            if i < 3:
                p = {k: sd[f"Decoder.bn{i + 1}.{k}"].astype(np.float64)[:, None, None]
                     for k in ("weight", "bias", "running_mean", "running_var")}
                x = (x - p["running_mean"]) / np.sqrt(p["running_var"] + 1e-5) * p["weight"] + p["bias"]
                x = np.maximum(x, 0) + np.asarray(skips[names[i]][e]).transpose(2, 0, 1)
        np.testing.assert_allclose(logits[e, :, :, 0], x[0], rtol=1e-4, atol=1e-4 * np.abs(x).max())


@pytest.mark.parametrize("last_layer,depth,width,size", [("layer3", 18, 16, 64), ("layer2", 18, 16, 32),
                                                          ("layer1", 50, 8, 32)])
def test_decoder_depth_adapts_to_cut_layer(last_layer, depth, width, size):
    names = dec.decoder_skip_names(last_layer)
    widths = dec.decoder_widths(depth, last_layer, width)
    channels = dec.encoder_channels(depth, width)
    stride = 2 ** (len(names) + 1)
    h = size // stride
    rng = np.random.default_rng(4)
    feats = jnp.asarray(rng.normal(size=(2, h, h, channels[last_layer])).astype(np.float32))
    corr = jnp.asarray(rng.uniform(size=(2, h, h, h * h)).astype(np.float32))
    skips = _skips(2, h, widths, names)
    model = dec.CosegDecoder(widths=widths, skips=names)
    variables = model.init(jax.random.PRNGKey(0), feats, corr, skips, train=False)
    logits, updates = model.apply(variables, feats, corr, skips, train=True, mutable=["batch_stats"])
    assert logits.shape == (2, size, size, 1)
    assert np.all(np.isfinite(np.asarray(logits)))
    # Training mode updates the running statistics (the decoder's BN trains with batch statistics).
    before = variables["batch_stats"]["bn1"]["mean"]
    assert not np.allclose(np.asarray(before), np.asarray(updates["batch_stats"]["bn1"]["mean"]))


def test_skip_names_and_widths():
    assert dec.decoder_skip_names("layer3") == ("layer2", "layer1", "stem")
    assert dec.decoder_skip_names("layer1") == ("stem",)
    assert dec.decoder_widths(101, "layer3") == (512, 256, 64)
    assert dec.decoder_widths(18, "layer3", 16) == (32, 16, 16)
    with pytest.raises(ValueError, match="last_layer"):
        dec.decoder_skip_names("stem")


def test_bad_skip_shape_is_a_clear_error():
    feats = jnp.zeros((1, 2, 2, 3))
    corr = jnp.zeros((1, 2, 2, 4))
    skips = {"layer1": jnp.zeros((1, 4, 4, 7))}
    model = dec.CosegDecoder(widths=(5,), skips=("layer1",))
    with pytest.raises(ValueError, match="skip 'layer1'"):
        model.init(jax.random.PRNGKey(0), feats, corr, skips, train=False)
    with pytest.raises(KeyError, match="missing"):
        weights.decoder_variables_from_torch({}, prefix="Decoder.")
