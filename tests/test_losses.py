"""Tests of macosnet_jax.losses: parity with the reference fixtures (inlier score, cycle loss) and the
properties of every term (closed forms, zero at consistency, hinge, minimality, finiteness, one compile)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_fixture
from macosnet_jax import correlation, geometry, losses


@pytest.fixture(scope="module")
def inlier():
    d = load_fixture("inlier_loss")
    d["corr_nhwc"] = d["corr"].transpose(0, 2, 3, 1)
    return d


def _rel(a, b):
    return np.abs(np.asarray(a) - b).max() / np.abs(b).max()


# ------------------------------------------------------------------------------------------------- parity


@pytest.mark.parametrize("normalize,suffix", [(True, ""), (False, "_unnormalized")])
def test_inlier_scores_match_reference(inlier, normalize, suffix):
    corr, aff, tps = inlier["corr_nhwc"], inlier["theta_aff"], inlier["theta_tps"]
    score_aff = jax.jit(jax.vmap(lambda c, a: losses.inlier_score(c, a, normalize=normalize)))(corr, aff)
    score_comp = jax.jit(jax.vmap(lambda c, a, t: losses.inlier_score(c, a, t, normalize=normalize)))(corr, aff, tps)
    assert _rel(score_aff, inlier["score_aff" + suffix]) < 1e-4
    assert _rel(score_comp, inlier["score_comp" + suffix]) < 1e-4


def test_matching_loss_one_direction_is_weakalign_loss(inlier):
    loss = jax.jit(jax.vmap(losses.matching_loss))(inlier["corr_nhwc"], inlier["theta_aff"], inlier["theta_tps"])
    np.testing.assert_allclose(np.mean(loss), inlier["loss"], rtol=1e-4)


def test_inlier_masks_and_grids_match_reference(inlier):
    aff, tps = inlier["theta_aff"], inlier["theta_tps"]
    grid_aff = jax.vmap(lambda a: losses.inlier_sampling_grid(a, None, 15, 15))(aff)
    np.testing.assert_allclose(grid_aff, inlier["affine_grid_15_offset"], atol=1e-5)
    grid_tps = jax.vmap(lambda t: geometry.tps_grid(t, 15, 15, 0.2, losses.OFFSET_FACTOR))(tps)
    np.testing.assert_allclose(grid_tps, inlier["tps_grid_15_offset_reg02"], atol=5e-5)
    grid_comp = jax.vmap(lambda a, t: losses.inlier_sampling_grid(a, t, 15, 15))(aff, tps)
    ref = inlier["composed_grid_15"]
    usable = np.all(np.abs(ref) <= 1.5, axis=-1)
    assert usable.sum() > 100
    np.testing.assert_allclose(np.asarray(grid_comp)[usable], ref[usable], atol=5e-5)
    # Unusable reference cells (-1e10 markers, garbage) must also be unusable here.
    assert np.all(np.asarray(grid_comp)[~usable] == geometry.INVALID_COORDINATE)
    for grid, key in ((grid_aff, "warped_mask_aff"), (grid_comp, "warped_mask_comp")):
        mask = jax.vmap(losses.inlier_mask)(grid)
        np.testing.assert_allclose(np.asarray(mask).transpose(0, 3, 1, 2), inlier[key], atol=1e-5)
    identity_mask = losses.inlier_mask(geometry.base_grid(15, 15))
    np.testing.assert_allclose(np.asarray(identity_mask).transpose(2, 0, 1), inlier["mask_id"][0], atol=1e-6)


def test_identity_affine_score_matches_reference(inlier):
    score = losses.inlier_score(inlier["corr_nhwc"][0], geometry.IDENTITY_AFFINE)
    np.testing.assert_allclose(score, inlier["identity_score_aff"][0], rtol=1e-4)


def test_macosnet_segmask_variant_as_documented(inlier):
    """The released seg-mask score: per-cell scores S weighted by g = max_k corr (fg_weight='maxcorr')."""
    corr, aff, tps = inlier["corr_nhwc"], inlier["theta_aff"], inlier["theta_tps"]
    g = jax.vmap(lambda c: losses.foreground_weight("maxcorr", c))(corr)
    np.testing.assert_allclose(g, inlier["macosnet_seg_mask"][:, 0], rtol=1e-6)
    for theta_tps, key in ((None, "aff"), (tps, "comp")):
        cells = jax.vmap(lambda c, a, t: losses.inlier_cell_scores(c, a, t), in_axes=(0, 0, None if theta_tps is None else 0))(
            corr, aff, theta_tps)
        per_example = inlier[f"macosnet_segmask_score_{key}_per_example"]
        # Batch of one: out[x] = Σ_y S(y, x) g(y, x).
        assert _rel(jnp.sum(cells * g, axis=1), per_example) < 1e-4
        # Our per-example score sums that row (the paper's Σ_q w(q) s(q)).
        total = jax.vmap(lambda c, a, t, w: losses.inlier_score(c, a, t, fg_weight=w),
                         in_axes=(0, 0, None if theta_tps is None else 0, 0))(corr, aff, theta_tps, g)
        assert _rel(total, per_example.sum(-1)) < 1e-4
        # The whole-batch call broadcasts (the shape bug): out[j, x] = Σ_i Σ_y S_i(y, x) g_j(y, x).
        batched = jnp.einsum("iyx,jyx->jx", cells, g)
        assert _rel(batched, inlier[f"macosnet_segmask_score_{key}_batched"]) < 1e-4


def test_cycle_loss_compat_matches_reference():
    d = load_fixture("cycle_loss")
    ab = jax.vmap(losses.cycle_loss_compat)(d["theta_AB"], d["theta_BA"])
    ba = jax.vmap(losses.cycle_loss_compat)(d["theta_BA"], d["theta_AB"])
    np.testing.assert_allclose(ab, d["cycle_AB_per_example"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(ba, d["cycle_BA_per_example"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.mean(ab), d["cycle_AB"], rtol=1e-4)
    np.testing.assert_allclose((np.mean(ab) + np.mean(ba)) / 2, d["cycle_loss"], rtol=1e-4)
    np.testing.assert_allclose(losses._compat_points().T, d["coord"][0], atol=1e-4)
    # The same through total_loss's compat switch.
    outputs = {"theta_aff": {"ab": d["theta_AB"], "ba": d["theta_BA"]}, "theta_tps": {}, "mask_logits": {}}
    _, terms = jax.jit(lambda o: losses.total_loss(o, {"cycle": 1.0}, cycle_compat=True))(outputs)
    np.testing.assert_allclose(terms["cycle"], d["cycle_loss"], rtol=1e-4)


# --------------------------------------------------------------------------------------------- properties


def _random_affine(rng, scale=0.2):
    return (geometry.IDENTITY_AFFINE + rng.uniform(-scale, scale, 6)).astype(np.float32)


def _matrix(theta):
    return np.vstack([np.asarray(theta, np.float64).reshape(2, 3), [0, 0, 1]])


def _theta(matrix):
    return matrix[:2].reshape(-1).astype(np.float32)


def test_identical_images_identity_map_maximal_score():
    rng = np.random.default_rng(0)
    f = correlation.l2_normalize(jnp.asarray(rng.normal(size=(8, 8, 64)).astype(np.float32)))
    corr = correlation.normalize_correlation(correlation.correlation(f, f))
    score = jax.jit(losses.inlier_score)
    identity = score(corr, geometry.IDENTITY_AFFINE)
    others = [score(corr, _random_affine(rng, 0.15)) for _ in range(20)]
    assert identity > max(others)
    # A pure sub-cell shift loses score too (the bilinear kernel spreads the mass off the diagonal).
    shift = geometry.IDENTITY_AFFINE + np.array([0, 0, 0.05, 0, 0, 0], np.float32)
    assert identity > score(corr, shift)


def test_ball_kernel_identity_is_one_hot():
    m = losses.inlier_mask(geometry.base_grid(5, 4), kernel="ball", ball_radius=0.5)
    np.testing.assert_allclose(m, losses.inlier_mask(geometry.base_grid(5, 4)), atol=1e-6)
    wide = losses.inlier_mask(geometry.base_grid(5, 4), kernel="ball", ball_radius=1.0)
    assert float(wide.sum()) > float(m.sum())


def test_foreground_weight_kinds():
    rng = np.random.default_rng(1)
    corr = jnp.asarray(rng.uniform(size=(4, 4, 16)).astype(np.float32))
    mask = jnp.asarray(rng.uniform(size=(16, 16)).astype(np.float32))
    pooled = losses.foreground_weight("mask", corr, mask)
    np.testing.assert_allclose(pooled[1, 2], np.asarray(mask)[4:8, 8:12].mean(), rtol=1e-6)
    np.testing.assert_allclose(losses.foreground_weight("maxcorr", corr), np.asarray(corr).max(-1))
    assert losses.foreground_weight("none", corr) is None
    with pytest.raises(ValueError, match="kind"):
        losses.foreground_weight("both", corr)
    with pytest.raises(ValueError, match="multiple"):
        losses.foreground_weight("mask", corr, mask[:15])


def test_matching_loss_two_directions_averages():
    rng = np.random.default_rng(2)
    corr_ab, corr_ba = (jnp.asarray(rng.uniform(size=(5, 5, 25)).astype(np.float32)) for _ in range(2))
    aff_ab, aff_ba = _random_affine(rng), _random_affine(rng)
    tps_ab = (geometry.IDENTITY_TPS + rng.uniform(-0.1, 0.1, 18)).astype(np.float32)
    tps_ba = (geometry.IDENTITY_TPS + rng.uniform(-0.1, 0.1, 18)).astype(np.float32)
    loss = jax.jit(losses.matching_loss)
    both = loss(corr_ab, aff_ab, tps_ab, corr_ba, aff_ba, tps_ba)
    one_ab = loss(corr_ab, aff_ab, tps_ab)
    one_ba = loss(corr_ba, aff_ba, tps_ba)
    np.testing.assert_allclose(both, (one_ab + one_ba) / 2, rtol=1e-6)


def test_cycle_loss_zero_for_exact_inverse_and_closed_form():
    rng = np.random.default_rng(3)
    ab = _random_affine(rng)
    ba = _theta(np.linalg.inv(_matrix(ab)))
    cycle = jax.jit(losses.cycle_loss)
    assert float(cycle(ab, None, ba, None)) < 1e-5
    # With identity TPS stages the composed maps are the same affine maps (TPS identity to ~1e-6).
    assert float(cycle(ab, geometry.IDENTITY_TPS, ba, geometry.IDENTITY_TPS)) < 1e-4
    # Gradient at the exact inverse is finite (safe norm).
    g = jax.grad(lambda t: losses.cycle_loss(t, None, t, None))(geometry.IDENTITY_AFFINE)
    assert np.all(np.isfinite(g))
    # Closed form: T_AB a translation by t, T_BA the identity -> every point moves by |t| both ways.
    t = np.array([0.3, -0.4], np.float32)
    shift = np.array([1, 0, t[0], 0, 1, t[1]], np.float32)
    np.testing.assert_allclose(cycle(shift, None, geometry.IDENTITY_AFFINE, None), 0.5, rtol=1e-5)
    assert float(cycle(ab, None, _random_affine(rng), None)) > 1e-2


def _np_affine(theta, p):
    return p @ np.asarray(theta, np.float64).reshape(2, 3)[:, :2].T + np.asarray(theta, np.float64).reshape(2, 3)[:, 2]


def test_transitivity_zero_for_consistent_triple_and_matches_numpy():
    rng = np.random.default_rng(4)
    ab, bc = _random_affine(rng), _random_affine(rng)
    ca = _theta(np.linalg.inv(_matrix(ab) @ _matrix(bc)))  # T_AB∘T_BC∘T_CA = id
    assert float(losses.transitivity_loss(ab, None, bc, None, ca, None)) < 1e-5
    # Inconsistent triple: compare with an independent numpy evaluation of the three chains.
    ca2 = _random_affine(rng)
    p = np.stack(np.meshgrid(np.linspace(-1, 1, 10), np.linspace(-1, 1, 10)), -1).reshape(-1, 2)
    f = {"ab": lambda x: _np_affine(ab, x), "bc": lambda x: _np_affine(bc, x), "ca": lambda x: _np_affine(ca2, x)}
    chains = [f["ab"](f["bc"](f["ca"](p))), f["bc"](f["ca"](f["ab"](p))), f["ca"](f["ab"](f["bc"](p)))]
    expected = np.mean([np.linalg.norm(c - p, axis=-1).mean() for c in chains])
    np.testing.assert_allclose(losses.transitivity_loss(ab, None, bc, None, ca2, None), expected, rtol=1e-5)
    # The order matters: the consistent CA under the released code's order (T_CA∘T_BC∘T_AB) is not zero.
    wrong = _np_affine(ca, _np_affine(bc, _np_affine(ab, p)))
    assert np.linalg.norm(wrong - p, axis=-1).mean() > 1e-2


def test_contrastive_hinge_and_closed_form():
    rng = np.random.default_rng(5)
    c = 8
    fa, fb = rng.normal(size=c).astype(np.float32), rng.normal(size=c).astype(np.float32)
    positive = np.sum((fa - fb) ** 2) / c
    far_a, far_b = fa + 10.0, fb - 10.0  # separation (100c + 100c)/(2c) = 100 > margin
    np.testing.assert_allclose(losses.contrastive_loss(fa, fb, far_a, far_b), positive, rtol=1e-6)
    g = jax.grad(losses.contrastive_loss, argnums=2)(fa, fb, far_a, far_b)
    np.testing.assert_array_equal(g, 0.0)  # past the margin the negatives get no gradient
    near_a, near_b = fa + 0.1, fb + 0.2
    sep = (c * 0.01 + c * 0.04) / (2 * c)
    np.testing.assert_allclose(losses.contrastive_loss(fa, fb, near_a, near_b, margin=1.0),
                               positive + 1.0 - sep, rtol=1e-5)
    assert float(losses.contrastive_loss(fa, fa, fa, fa)) == 1.0  # identical: d+ = 0, d- = margin


def test_masked_images():
    image = jnp.asarray(np.random.default_rng(6).normal(size=(4, 5, 3)).astype(np.float32))
    mask = jnp.linspace(0, 1, 20).reshape(4, 5)
    fg, bg = losses.masked_images(image, mask)
    np.testing.assert_allclose(fg + bg, image, rtol=1e-6)
    np.testing.assert_allclose(fg[..., 1], mask * image[..., 1], rtol=1e-6)
    with pytest.raises(ValueError, match="match"):
        losses.masked_images(image, mask[:3])


def test_task_loss_minimal_for_consistent_masks():
    rng = np.random.default_rng(7)
    logits = jnp.asarray(rng.normal(size=(16, 16)).astype(np.float32))
    ident_a, ident_t = geometry.IDENTITY_AFFINE, geometry.IDENTITY_TPS
    loss = jax.jit(lambda la, lb: losses.task_loss(la, lb, ident_a, ident_t, ident_a, ident_t,
                                                   stop_gradient_target=True))
    p = jax.nn.sigmoid(logits)
    entropy = -(p * jnp.log(p) + (1 - p) * jnp.log(1 - p))
    # Consistent masks: each BCE equals the target's entropy (its minimum over predictions).
    np.testing.assert_allclose(loss(logits, logits), 2 * jnp.mean(entropy), rtol=1e-4)
    grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(logits, logits)
    assert max(float(jnp.abs(g).max()) for g in grads) < 1e-6
    for _ in range(3):
        delta = jnp.asarray(rng.normal(scale=0.3, size=(16, 16)).astype(np.float32))
        assert loss(logits, logits + delta) > loss(logits, logits)
    # The warp direction: with T_AB a shift, M̃_A(q) = M_A(T_AB(q)).
    mask = np.zeros((8, 8), np.float32)
    mask[2:5, 2:5] = 1
    shift = np.array([1, 0, 2 / 7, 0, 1, 0], np.float32)  # one pixel in normalised units (7 = W - 1)
    warped = np.asarray(losses.warp_mask(jnp.asarray(mask), shift))
    np.testing.assert_allclose(warped[2:5, 1:4], 1.0, atol=1e-5)
    assert warped[2:5, 4].max() < 1e-5


def test_grid_loss_closed_forms():
    t = np.array([0.1, -0.2], np.float32)
    shift = np.array([1, 0, t[0], 0, 1, t[1]], np.float32)
    np.testing.assert_allclose(losses.grid_loss(shift, geometry.IDENTITY_AFFINE), np.sum(t ** 2), rtol=1e-5)
    tps_shift = geometry.IDENTITY_TPS + np.repeat(t, 9)
    np.testing.assert_allclose(losses.grid_loss(tps_shift, geometry.IDENTITY_TPS, kind="tps"), np.sum(t ** 2),
                               rtol=1e-4)
    assert float(losses.grid_loss(geometry.IDENTITY_AFFINE, geometry.IDENTITY_AFFINE)) == 0.0
    with pytest.raises(ValueError, match="kind"):
        losses.grid_loss(shift, shift, kind="homography")


def _fake_outputs(rng, batch=2, h=4, size=16, triplet=True):
    dirs = ("ab", "ba", "bc", "ca") if triplet else ("ab", "ba")
    aff = {d: jnp.asarray(np.stack([_random_affine(rng) for _ in range(batch)])) for d in dirs}
    tps = {d: jnp.asarray((geometry.IDENTITY_TPS + rng.uniform(-.1, .1, (batch, 18))).astype(np.float32))
           for d in dirs}
    corr = {d: correlation.normalize_correlation(jnp.asarray(rng.normal(size=(batch, h, h, h * h)).astype(np.float32)))
            for d in ("ab", "ba")}
    logits = {k: jnp.asarray(rng.normal(size=(batch, size, size)).astype(np.float32)) for k in "ab"}
    return {"theta_aff": aff, "theta_tps": tps, "corr": corr, "mask_logits": logits}


def test_total_loss_finite_gradients_and_one_compile():
    rng = np.random.default_rng(8)
    outputs = _fake_outputs(rng)
    images = {k: jnp.asarray(rng.normal(size=(2, 16, 16, 3)).astype(np.float32)) for k in "ab"}
    w_perc = jnp.asarray(rng.normal(size=(3, 5)).astype(np.float32))
    traces = []

    def objective(outs, imgs, w):
        traces.append(1)
        descriptor = lambda x: jnp.mean(jnp.tanh(x @ jax.lax.stop_gradient(w)), axis=(1, 2))  # noqa: E731
        return losses.total_loss(outs, losses.DEFAULT_WEIGHTS, images=imgs, descriptor_fn=descriptor)

    fn = jax.jit(jax.value_and_grad(objective, argnums=(0, 2), has_aux=True))
    (loss, terms), (g_out, g_w) = fn(outputs, images, w_perc)
    assert set(terms) == {"matching", "cycle", "transitivity", "contrastive", "task"}
    assert all(np.isfinite(float(v)) for v in terms.values()) and np.isfinite(float(loss))
    np.testing.assert_allclose(loss, sum(terms.values()), rtol=1e-6)
    leaves = jax.tree_util.tree_leaves(g_out)
    assert all(np.all(np.isfinite(np.asarray(x))) for x in leaves)
    assert float(jnp.abs(g_out["mask_logits"]["a"]).max()) > 0  # contrastive + task reach the masks
    assert float(jnp.abs(g_out["theta_aff"]["ca"]).max()) > 0  # transitivity reaches the third map
    np.testing.assert_array_equal(g_w, 0.0)  # no gradient reaches the frozen perceptual weights
    fn(_fake_outputs(np.random.default_rng(9)), images, w_perc)  # new values, same shapes
    assert len(traces) == 1


def test_total_loss_pair_outputs_weights_and_fg_kinds():
    rng = np.random.default_rng(10)
    outputs = _fake_outputs(rng, triplet=False)
    weights = {"matching": 1.0, "cycle": 0.5, "task": 2.0}
    loss, terms = jax.jit(lambda o: losses.total_loss(o, weights))(outputs)
    assert set(terms) == set(weights)
    np.testing.assert_allclose(loss, terms["matching"] + 0.5 * terms["cycle"] + 2 * terms["task"], rtol=1e-6)
    with pytest.raises(ValueError, match="transitivity"):
        losses.total_loss(outputs, {"transitivity": 1.0})
    # The fg weight changes the matching term; 'none' is the plain (weakalign) score averaged over directions.
    matching = jax.jit(lambda o, fg: losses.total_loss(o, {"matching": 1.0}, fg_weight=fg)[1]["matching"],
                       static_argnums=1)
    values = {fg: float(matching(outputs, fg)) for fg in ("mask", "maxcorr", "none")}
    np.testing.assert_allclose(values["mask"], terms["matching"], rtol=1e-6)
    assert len(set(values.values())) == 3
    c, a, t = outputs["corr"], outputs["theta_aff"], outputs["theta_tps"]
    plain = jax.jit(jax.vmap(losses.matching_loss))(c["ab"], a["ab"], t["ab"], c["ba"], a["ba"], t["ba"])
    np.testing.assert_allclose(values["none"], np.mean(plain), rtol=1e-5)


def _mask_gradient_case(seed=11):
    rng = np.random.default_rng(seed)
    outputs = _fake_outputs(rng, triplet=False)
    fn = lambda o, mode: losses.total_loss(o, {"matching": 1.0}, fg_weight="mask", fg_weight_gradient=mode)[0]  # noqa: E731
    grads = {m: jax.jit(jax.value_and_grad(fn), static_argnums=1)(outputs, m) for m in ("stop", "raw", "centered")}
    return outputs, grads


def _np_cell_scores(outputs, direction, example):
    c, a, t = outputs["corr"][direction][example], outputs["theta_aff"][direction][example], \
        outputs["theta_tps"][direction][example]
    return [np.asarray(losses.inlier_cell_scores(c, a, tps), np.float64) for tps in (None, t)]


def test_fg_weight_gradient_modes_value_and_theta_gradient_unchanged():
    """'centered' adds a zero-valued term: the loss and every gradient but the masks' equal those of 'stop'."""
    _, grads = _mask_gradient_case()
    (v_stop, g_stop), (v_raw, _), (v_cen, g_cen) = grads["stop"], grads["raw"], grads["centered"]
    np.testing.assert_allclose([v_raw, v_cen], [v_stop, v_stop], rtol=1e-6)
    for key in ("theta_aff", "theta_tps", "corr"):
        for d in g_stop[key]:
            np.testing.assert_allclose(g_cen[key][d], g_stop[key][d], rtol=1e-5, atol=1e-8)
    np.testing.assert_array_equal(g_stop["mask_logits"]["a"], 0.0)
    np.testing.assert_array_equal(g_stop["mask_logits"]["b"], 0.0)
    with pytest.raises(ValueError, match="fg_weight_gradient"):
        losses.total_loss(_fake_outputs(np.random.default_rng(0), triplet=False), {"matching": 1.0},
                          fg_weight_gradient="sideways")


def test_fg_weight_gradient_raw_and_centered_closed_forms():
    """d/d(logit) of B's mask pixel: raw −½Σ_maps s(cell)/(B·area)·σ'; centered −½Σ_maps z(cell)/(B·h·w·area)·σ'."""
    outputs, grads = _mask_gradient_case()
    batch, size = outputs["mask_logits"]["b"].shape[:2]
    h = outputs["corr"]["ab"].shape[1]
    block = size // h
    for example in range(batch):
        logits = np.asarray(outputs["mask_logits"]["b"][example], np.float64)
        p = 1.0 / (1.0 + np.exp(-logits))
        dsig = p * (1 - p)
        scores = _np_cell_scores(outputs, "ab", example)  # B's cells are scored by the AB direction
        raw_cells = -0.5 * sum(scores) / batch / block ** 2
        z = [(s - s.mean()) / (s.std() + 1e-8) for s in scores]
        cen_cells = -0.5 * sum(z) / (batch * h * h) / block ** 2
        up = lambda cells: np.kron(cells, np.ones((block, block))) * dsig  # noqa: E731
        np.testing.assert_allclose(grads["raw"][1]["mask_logits"]["b"][example], up(raw_cells), rtol=2e-4, atol=1e-9)
        np.testing.assert_allclose(grads["centered"][1]["mask_logits"]["b"][example], up(cen_cells), rtol=2e-4,
                                   atol=1e-9)
    # raw only ever asks for more foreground; centered pushes some cells each way
    assert np.all(np.asarray(grads["raw"][1]["mask_logits"]["b"]) <= 0)
    g = np.asarray(grads["centered"][1]["mask_logits"]["b"])
    assert (g > 0).any() and (g < 0).any()


def _np_upsample_half_pixel(cells: np.ndarray, size: int) -> np.ndarray:
    """Bilinear (h, w) -> (size, size) with half-pixel centres and edge clamping, in NumPy (independent)."""
    h = cells.shape[0]
    pos = (np.arange(size) + 0.5) * h / size - 0.5  # pixel centre in cell-index units
    pos = np.clip(pos, 0, h - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, h - 1)
    frac = pos - lo
    rows = cells[lo] * (1 - frac)[:, None] + cells[hi] * frac[:, None]
    return rows[:, lo] * (1 - frac)[None] + rows[:, hi] * frac[None]


def _np_label_scores(partners):
    def standardize(x):
        return (x - x.mean()) / (x.std() + 1e-8)
    zs = []
    for corr, aff, tps in partners:
        s = np.asarray(losses.inlier_cell_scores(corr, aff, tps), np.float64)
        zs.append(standardize(s / (np.asarray(corr, np.float64).max(-1) + 1e-6)))
    return standardize(sum(zs) / len(zs))


def _np_pseudo_labels(partners, threshold, sharpness):
    return 1.0 / (1.0 + np.exp(-sharpness * (_np_label_scores(partners) - threshold)))


def _np_weighted_bce(logits, target, weight, balanced):
    """NumPy: the weighted (or foreground/background-balanced) mean BCE and its gradient on the logits."""
    logits = np.asarray(logits, np.float64)
    p = 1.0 / (1.0 + np.exp(-logits))
    bce = -(target * np.log(p) + (1 - target) * np.log(1 - p))
    if not balanced:
        return np.sum(weight * bce) / np.sum(weight), weight * (p - target) / np.sum(weight)
    fg, bg = weight * target, weight * (1 - target)
    value = 0.5 * (np.sum(fg * bce) / np.sum(fg) + np.sum(bg * bce) / np.sum(bg))
    grad = 0.5 * (fg / np.sum(fg) + bg / np.sum(bg)) * (p - target)
    return value, grad


def test_matching_pseudo_labels_closed_form_and_constant():
    rng = np.random.default_rng(21)
    outputs = _fake_outputs(rng, batch=1, h=5)
    partner = lambda d: (outputs["corr"][d][0], outputs["theta_aff"][d][0], outputs["theta_tps"][d][0])  # noqa: E731
    for partners, thr, sharp in (([partner("ab")], 0.5, 10.0), ([partner("ab"), partner("ba")], 1.0, 3.0)):
        got = losses.matching_pseudo_labels(partners, threshold=thr, sharpness=sharp)
        np.testing.assert_allclose(got, _np_pseudo_labels(partners, thr, sharp), rtol=1e-4, atol=1e-6)
    # A cell whose predicted match is also its best correlation is labelled foreground, the others background:
    # identity affine maps (the composed map scores only strictly interior cells); the left half's correlation peaks at the cell's own position, the right half's elsewhere.
    h = 4
    corr = np.full((h, h, h * h), 0.1, np.float32)
    for y in range(h):
        for x in range(h):
            match = x if x < h // 2 else h - 1 - x  # right half: peaked at the mirrored (wrong) column
            corr[y, x, match * h + (h - 1 - y if x >= h // 2 else y)] = 1.0  # channel k = x·h + y
    labels = losses.matching_pseudo_labels([(jnp.asarray(corr), geometry.IDENTITY_AFFINE, None)],
                                           offset_factor=1.0)
    assert np.all(np.asarray(labels)[:, : h // 2] > 0.9) and np.all(np.asarray(labels)[:, h // 2:] < 0.1)
    # a teacher: no gradient reaches the correlation or θ
    grad = jax.grad(lambda c, a: jnp.sum(losses.matching_pseudo_labels([(c, a, partners[0][2])])), argnums=(0, 1))(
        partners[0][0], partners[0][1])
    assert all(not np.any(np.asarray(g)) for g in grad)
    with pytest.raises(ValueError, match="partner"):
        losses.matching_pseudo_labels([])


def test_pseudo_label_loss_is_bce_on_upsampled_targets():
    rng = np.random.default_rng(22)
    cells = rng.uniform(0, 1, (4, 4)).astype(np.float32)
    logits = rng.normal(size=(16, 16)).astype(np.float32)
    target = _np_upsample_half_pixel(cells.astype(np.float64), 16)
    p = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    expected = np.mean(-(target * np.log(p) + (1 - target) * np.log(1 - p)))
    value, grad = jax.value_and_grad(losses.pseudo_label_loss)(jnp.asarray(logits), jnp.asarray(cells))
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    np.testing.assert_allclose(grad, (p - target) / logits.size, rtol=1e-4, atol=1e-9)  # (σ − t)/N: no saturation


def test_confident_pseudo_labels_ignore_the_band_and_are_constant():
    rng = np.random.default_rng(24)
    outputs = _fake_outputs(rng, batch=1, h=6)
    partners = [(outputs["corr"][d][0], outputs["theta_aff"][d][0], outputs["theta_tps"][d][0]) for d in ("ab", "ba")]
    z = _np_label_scores(partners)
    targets, weights = losses.confident_pseudo_labels(partners, low=-0.2, high=0.6)
    np.testing.assert_array_equal(np.asarray(targets), (z > 0.6).astype(np.float32))
    np.testing.assert_array_equal(np.asarray(weights), ((z > 0.6) | (z < -0.2)).astype(np.float32))
    assert 0 < np.asarray(weights).sum() < z.size  # the band is really left out here, and something is labelled
    grad = jax.grad(lambda c: jnp.sum(sum(losses.confident_pseudo_labels([(c,) + partners[0][1:]]))))(partners[0][0])
    assert not np.any(np.asarray(grad))
    with pytest.raises(ValueError, match="low <= high"):
        losses.confident_pseudo_labels(partners, low=1.0, high=0.5)


def test_pseudo_label_scores_self_training_term():
    """own_logits with weight β: z = standardise(z + β standardise(block-mean of the logits)); no gradient."""
    rng = np.random.default_rng(27)
    outputs = _fake_outputs(rng, batch=1, h=4)
    partners = [(outputs["corr"]["ab"][0], outputs["theta_aff"]["ab"][0], outputs["theta_tps"]["ab"][0])]
    logits = rng.normal(size=(16, 16)).astype(np.float32)
    pooled = logits.astype(np.float64).reshape(4, 4, 4, 4).mean(axis=(1, 3))  # 4x4 blocks of pixels per cell

    def standardize(x):
        return (x - x.mean()) / (x.std() + 1e-8)
    for beta in (0.0, 1.5):
        got = losses.pseudo_label_scores(partners, own_logits=jnp.asarray(logits), own_weight=beta)
        expected = standardize(_np_label_scores(partners) + beta * standardize(pooled)) if beta else \
            _np_label_scores(partners)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    grad = jax.grad(lambda l: jnp.sum(losses.pseudo_label_scores(partners, own_logits=l, own_weight=1.0) ** 3))(
        jnp.asarray(logits))
    assert not np.any(np.asarray(grad))


@pytest.mark.parametrize("balanced", [False, True])
def test_pseudo_label_loss_weighted_and_balanced(balanced):
    rng = np.random.default_rng(25)
    cells = (rng.uniform(0, 1, (4, 4)) > 0.6).astype(np.float32)
    weight_cells = (rng.uniform(0, 1, (4, 4)) > 0.3).astype(np.float32)
    logits = rng.normal(size=(16, 16)).astype(np.float32)
    target = _np_upsample_half_pixel(cells.astype(np.float64), 16)
    weight = _np_upsample_half_pixel(weight_cells.astype(np.float64), 16)
    expected, expected_grad = _np_weighted_bce(logits, target, weight, balanced)
    value, grad = jax.value_and_grad(losses.pseudo_label_loss)(jnp.asarray(logits), jnp.asarray(cells),
                                                              jnp.asarray(weight_cells), balanced=balanced)
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-4, atol=1e-9)
    if balanced:  # without weights: every pixel labelled, each side's mean counts half
        unweighted, _ = _np_weighted_bce(logits, target, np.ones_like(target), True)
        np.testing.assert_allclose(losses.pseudo_label_loss(jnp.asarray(logits), jnp.asarray(cells), balanced=True),
                                   unweighted, rtol=1e-5)


def _triplet_outputs_with_ca(seed):
    rng = np.random.default_rng(seed)
    outputs = _fake_outputs(rng, batch=2, h=4, triplet=True)
    outputs["corr"]["ca"] = correlation.normalize_correlation(
        jnp.asarray(rng.normal(size=(2, 4, 4, 16)).astype(np.float32)))
    return outputs


def _labelled_images(outputs):
    """(example, image, partners) for the pseudo-label term: A is labelled by B and C, B by A."""
    c, a, t = outputs["corr"], outputs["theta_aff"], outputs["theta_tps"]
    for example in range(outputs["mask_logits"]["a"].shape[0]):
        part = lambda d, e=example: (c[d][e], a[d][e], t[d][e])  # noqa: E731
        for image, partners in (("a", [part("ba"), part("ca")]), ("b", [part("ab")])):
            yield example, image, partners


def test_total_loss_confident_balanced_self_trained_pseudo_labels():
    """pseudo_label_low set: the mask_label term is the balanced BCE against `confident_pseudo_labels`, whose z
    also holds the image's own pooled logits with weight pseudo_label_self_weight."""
    outputs = _triplet_outputs_with_ca(26)
    size = outputs["mask_logits"]["a"].shape[1]

    def standardize(x):
        return (x - x.mean()) / (x.std() + 1e-8)
    for beta in (0.0, 1.5):
        _, terms = losses.total_loss(outputs, {"matching": 1.0}, fg_weight="mask", fg_weight_gradient="pseudo_label",
                                     pseudo_label_low=0.0, pseudo_label_threshold=0.5, pseudo_label_balanced=True,
                                     pseudo_label_self_weight=beta)
        expected = 0.0
        for example, image, partners in _labelled_images(outputs):
            logits = np.asarray(outputs["mask_logits"][image][example], np.float64)
            z = _np_label_scores(partners)
            if beta:
                pooled = logits.reshape(4, size // 4, 4, size // 4).mean(axis=(1, 3))
                z = standardize(z + beta * standardize(pooled))
            target = _np_upsample_half_pixel((z > 0.5).astype(np.float64), size)
            weight = _np_upsample_half_pixel(((z > 0.5) | (z < 0.0)).astype(np.float64), size)
            value, _ = _np_weighted_bce(logits, target, weight, True)
            expected += 0.5 * value / 2
        np.testing.assert_allclose(terms["mask_label"], expected, rtol=1e-4)


def test_fg_weight_gradient_pseudo_label_adds_mask_label_term():
    """'pseudo_label': matching value and θ-gradients as 'stop'; the masks' gradient is that of the BCE against
    the labels (A labelled by B and, in a triplet, C; B by A); the term is weighted by λ_match."""
    outputs = _triplet_outputs_with_ca(23)
    weights = {"matching": 2.0}

    def fn(o, mode):
        return losses.total_loss(o, weights, fg_weight="mask", fg_weight_gradient=mode)

    (v_stop, t_stop), g_stop = jax.value_and_grad(fn, has_aux=True)(outputs, "stop")
    (v_pl, t_pl), g_pl = jax.value_and_grad(fn, has_aux=True)(outputs, "pseudo_label")
    assert set(t_pl) == {"matching", "mask_label"}
    np.testing.assert_allclose(t_pl["matching"], t_stop["matching"], rtol=1e-6)
    np.testing.assert_allclose(v_pl, v_stop + 2.0 * t_pl["mask_label"], rtol=1e-6)
    for key in ("theta_aff", "theta_tps", "corr"):
        for d in g_stop[key]:
            np.testing.assert_allclose(g_pl[key][d], g_stop[key][d], rtol=1e-5, atol=1e-8)
    size = outputs["mask_logits"]["a"].shape[1]
    expected = 0.0
    for example, image, partners in _labelled_images(outputs):
        target = _np_upsample_half_pixel(_np_pseudo_labels(partners, 0.5, 10.0), size)
        logits = np.asarray(outputs["mask_logits"][image][example], np.float64)
        p = 1.0 / (1.0 + np.exp(-logits))
        expected += 0.5 * np.mean(-(target * np.log(p) + (1 - target) * np.log(1 - p))) / 2
        np.testing.assert_allclose(g_pl["mask_logits"][image][example], 2.0 * 0.5 * (p - target) / p.size / 2,
                                   rtol=1e-3, atol=1e-9)
    np.testing.assert_allclose(t_pl["mask_label"], expected, rtol=1e-4)


def test_true_mask_foreground_weight_equals_mask_weight_with_saturated_logits():
    """fg_weight='true_mask' (the oracle) weighs the matching score by the given masks: the same value as
    fg_weight='mask' with predicted masks that are exactly those masks."""
    rng = np.random.default_rng(0)
    b, g, size = 2, 4, 16
    corr = jnp.asarray(rng.uniform(0, 1, (b, g, g, g * g)), jnp.float32)
    theta_aff = jnp.asarray(np.tile([1.0, 0.05, 0.0, -0.05, 1.0, 0.0], (b, 1)), jnp.float32)
    theta_tps = jnp.asarray(np.tile(np.concatenate([np.linspace(-1, 1, 3).repeat(3), np.tile(np.linspace(-1, 1, 3), 3)]),
                                    (b, 1)), jnp.float32)
    masks = {k: (rng.uniform(0, 1, (b, size, size)) > 0.5).astype(np.float32) for k in "ab"}
    outputs = {"theta_aff": {"ab": theta_aff, "ba": theta_aff}, "theta_tps": {"ab": theta_tps, "ba": theta_tps},
               "corr": {"ab": corr, "ba": corr[:, ::-1]},
               "mask_logits": {k: jnp.asarray(200.0 * (m - 0.5)) for k, m in masks.items()}}
    oracle, _ = losses.total_loss(outputs, {"matching": 1.0}, fg_weight="true_mask", true_masks=masks)
    predicted, _ = losses.total_loss(outputs, {"matching": 1.0}, fg_weight="mask")
    unweighted, _ = losses.total_loss(outputs, {"matching": 1.0}, fg_weight="none")
    np.testing.assert_allclose(oracle, predicted, rtol=1e-5)
    assert abs(float(oracle) - float(unweighted)) > 1e-3  # the weights do change the score
    with pytest.raises(ValueError, match="ground-truth masks"):
        losses.total_loss(outputs, {"matching": 1.0}, fg_weight="true_mask")
    with pytest.raises(ValueError, match="fg_weight must be one of"):
        losses.LossOptions(fg_weight="masks")
