"""SPEC §6.6: the full objective on a batch of model outputs, as a sum over named, weighted terms.

`LossOptions` is the one home of every option of the objective and its default; a config's `losses` block is read
by `LossOptions.from_config`, which rejects a key it does not know. `TERMS` maps each term's name to the function
that computes its batch mean from the outputs and the options, and to the λ that weighs it; `total_loss` sums the
terms whose λ is non-zero. Adding a loss is one function below plus one entry in `TERMS` (its λ is then a config
key); an option it needs is one field of `LossOptions`.
"""
from __future__ import annotations

import dataclasses
import types
from typing import Callable, Mapping, Optional

import jax
import jax.numpy as jnp

from macosnet_jax.losses.consistency import cycle_loss, cycle_loss_compat, task_loss, transitivity_loss
from macosnet_jax.losses.contrastive import contrastive_loss, masked_images
from macosnet_jax.losses.edges import edge_aware_smoothness, unnormalize_image
from macosnet_jax.losses.inlier import OFFSET_FACTOR, foreground_weight, matching_loss
from macosnet_jax.losses.pseudo_labels import (confident_pseudo_labels, matching_mask_signal,
                                               matching_pseudo_labels, pseudo_label_loss)

# The paper's objective: all five terms with λ = 1.
DEFAULT_WEIGHTS = {"matching": 1.0, "cycle": 1.0, "transitivity": 1.0, "contrastive": 1.0, "task": 1.0}

FG_WEIGHT_GRADIENTS = ("stop", "raw", "centered", "pseudo_label")
FG_WEIGHTS = ("mask", "maxcorr", "none", "true_mask")


@dataclasses.dataclass(frozen=True)
class LossOptions:
    """Every option of the objective with its default (the keys of a config's `losses` block).

    weights: λ per weighted term name (`WEIGHT_NAMES`); a term whose λ is 0 or absent is not computed.
    fg_weight: 'mask' | 'maxcorr' | 'none', the matching score's per-cell foreground weight (SPEC §6.1,
      `foreground_weight`); 'true_mask' weighs by the batch's ground-truth masks instead of the predicted ones
      (an oracle for analysis: how much can foreground weights help matching on this data?). fg_weight_gradient: what the matching term tells the masks when fg_weight='mask'
      (SPEC is silent): 'stop' nothing (the matching term only trains θ and the encoder); 'raw' the paper's
      −Σ M_B(q) s(q) differentiated as it stands (every cell has s(q) ≥ 0, so it pushes all masks towards
      foreground); 'centered' cells matched better than their image's average are pushed up, the others down
      (`matching_mask_signal`; saturating: a push on σ(l) fades where σ'(l) → 0); 'pseudo_label' adds the term
      'mask_label' (weighted by λ_match): BCE of each mask against `matching_pseudo_labels` from its partners
      (A: B, and C in a triplet; B: A); the matching term's own value and θ-gradients are those of 'stop'.
    inlier_kernel, offset_factor, tps_reg: the inlier score's kernel ('bilinear' | 'ball'), the loss-time
      offset o (227/210) and the TPS λ inside the score (`inlier_score`).
    cycle_grid: K of the K×K point grid of cycle and transitivity. composed_consistency: cycle, transitivity and
      task on Aff(TPS(·)) (False: affine only, the released code). cycle_compat: the released cycle loss instead
      (`cycle_loss_compat`, both directions averaged; squared 240-px units).
    task_stop_gradient: stop gradients through the task term's warped targets (the reference does not).
    contrast_margin: m of the contrastive term's d⁻. perceptual_net / perceptual_weights: the frozen network F
      of the contrastive term ('imagenet_resnet50' with a torchvision .pth, or 'strong_encoder': the stage's
      initial encoder) and its weights' path; read by the joint stage.
    pseudo_label_threshold / pseudo_label_sharpness: z threshold and slope of the soft labels
      σ(sharpness·(z − threshold)). pseudo_label_low: None for those soft labels; a number for
      `confident_pseudo_labels` instead (foreground above the threshold, background below `low`, the band
      between ignored). pseudo_label_balanced: foreground and background pixels weigh equally in the BCE
      (`pseudo_label_loss`). pseudo_label_self_weight: β of `pseudo_label_scores` (the mask's own,
      gradient-stopped logits join the matching evidence; 0: matching alone).
    smoothness_sigma / smoothness_radius / smoothness_dilation: the colour kernel width (RGB in [0, 1]) and the
      window of the 'smoothness' term (`edge_aware_smoothness`; beyond the paper, off unless its λ is set).
    """
    weights: Mapping[str, float] = dataclasses.field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    fg_weight: str = "mask"
    fg_weight_gradient: str = "stop"
    inlier_kernel: str = "bilinear"
    offset_factor: float = OFFSET_FACTOR
    tps_reg: float = 0.2
    cycle_grid: int = 10
    composed_consistency: bool = True
    cycle_compat: bool = False
    task_stop_gradient: bool = False
    contrast_margin: float = 1.0
    perceptual_net: str = "imagenet_resnet50"
    perceptual_weights: str = ""
    pseudo_label_threshold: float = 0.5
    pseudo_label_sharpness: float = 10.0
    pseudo_label_low: Optional[float] = None
    pseudo_label_balanced: bool = False
    pseudo_label_self_weight: float = 0.0
    smoothness_sigma: float = 0.1
    smoothness_radius: int = 2
    smoothness_dilation: int = 2

    def __post_init__(self):
        if self.fg_weight not in FG_WEIGHTS:
            raise ValueError(f"fg_weight must be one of {FG_WEIGHTS}; got {self.fg_weight!r}")
        unknown = sorted(set(self.weights) - set(WEIGHT_NAMES))
        if unknown:
            raise ValueError(f"loss weight {unknown[0]!r} names no term; the weighted terms are {list(WEIGHT_NAMES)}")
        if self.fg_weight_gradient not in FG_WEIGHT_GRADIENTS:
            raise ValueError("fg_weight_gradient must be 'stop', 'raw', 'centered' or 'pseudo_label'; "
                             f"got {self.fg_weight_gradient!r}")
        # Read-only, so that a frozen LossOptions cannot change under a jitted function.
        object.__setattr__(self, "weights", types.MappingProxyType({k: float(v) for k, v in self.weights.items()}))

    def __hash__(self):  # usable as a static argument of jax.jit
        return hash(tuple((f.name, tuple(sorted(self.weights.items())) if f.name == "weights"
                           else getattr(self, f.name)) for f in dataclasses.fields(self)))

    @classmethod
    def from_config(cls, losses_config: Optional[Mapping] = None) -> "LossOptions":
        """A config's `losses` block (ConfigDict or dict; None: empty) -> LossOptions.

        Keys naming a weighted term are its λ (a term left out is off); every other key must be a field.
        """
        weights, fields = {}, {}
        option_names = {f.name for f in dataclasses.fields(cls)} - {"weights"}
        for key, value in (losses_config or {}).items():
            if key in WEIGHT_NAMES:
                weights[key] = float(value)
            elif key in option_names:
                fields[key] = value
            else:
                raise ValueError(f"config.losses.{key} is not a loss option; known keys: "
                                 f"{', '.join(list(WEIGHT_NAMES) + sorted(option_names))}")
        return cls(weights=weights, **fields)

    def weight(self, name: str) -> float:
        """λ of a weighted term (0.0 when absent)."""
        return self.weights.get(name, 0.0)

    def score_kwargs(self) -> dict:
        """The keyword options of `inlier_score` / `inlier_cell_scores`."""
        return dict(offset_factor=self.offset_factor, tps_reg=self.tps_reg, kernel=self.inlier_kernel)


# ----------------------------------------------------------------------------------------------------------
# The terms: (outputs, options, inputs) -> unweighted batch mean (scalar).
# outputs: batched model outputs (MaCoSNet.triplet / .pair): 'theta_aff' and 'theta_tps' map directions ('ab',
# 'ba', and 'bc', 'ca' for triplets) to (B, 6) / (B, 18); 'corr' maps 'ab', 'ba' (and 'ca' for triplets) to the
# normalised stage-1 correlations (B, h, w, h·w); 'mask_logits' maps 'a', 'b' to (B, H, W).


@dataclasses.dataclass(frozen=True)
class TermInputs:
    """What a term reads besides the outputs and the options.

    images: {'a', 'b'} normalised images (B, H, W, 3) or None; descriptor_fn: (N, H, W, 3) -> (N, c), the frozen
    perceptual network, or None; mask_probs: σ(mask_logits) per image (B, H, W), computed once so that the
    gradients of all terms reach the logits through one sigmoid; true_masks: the batch's ground-truth masks
    {'a', 'b'} (B, H, W) or None (only fg_weight='true_mask' reads them).
    """
    images: Optional[Mapping[str, jax.Array]]
    descriptor_fn: Optional[Callable[[jax.Array], jax.Array]]
    mask_probs: Mapping[str, jax.Array]
    true_masks: Optional[Mapping[str, jax.Array]] = None


def _consistency_tps(outputs: Mapping, options: LossOptions) -> Callable[[str], Optional[jax.Array]]:
    """direction -> θ_tps of the consistency terms (None: affine only)."""
    theta_tps = outputs["theta_tps"]
    return (lambda d: theta_tps[d]) if options.composed_consistency else (lambda d: None)


def matching_term(outputs, options: LossOptions, inputs: TermInputs) -> jax.Array:
    """L_matching over both directions with the options' foreground weight and mask gradient (SPEC §6.1)."""
    theta_aff, theta_tps, probs = outputs["theta_aff"], outputs["theta_tps"], inputs.mask_probs
    score_kwargs = options.score_kwargs()
    fg_weight, gradient = options.fg_weight, options.fg_weight_gradient
    if fg_weight == "true_mask":
        if inputs.true_masks is None:
            raise ValueError("fg_weight='true_mask' needs the batch's ground-truth masks (true_masks {'a', 'b'})")
        probs = {k: jnp.asarray(v, jnp.float32) for k, v in inputs.true_masks.items()}
        fg_weight = "mask"

    def pooled_weight(corr, mask):
        w = foreground_weight(fg_weight, corr, mask)
        return w if w is None or gradient == "raw" else jax.lax.stop_gradient(w)

    def one(corr_ab, corr_ba, aff_ab, tps_ab, aff_ba, tps_ba, mask_a, mask_b):
        loss = matching_loss(corr_ab, aff_ab, tps_ab, corr_ba, aff_ba, tps_ba,
                             fg_weight_ab=pooled_weight(corr_ab, mask_b),
                             fg_weight_ba=pooled_weight(corr_ba, mask_a), **score_kwargs)
        if fg_weight == "mask" and gradient == "centered":
            loss = loss + 0.5 * (matching_mask_signal(corr_ab, aff_ab, tps_ab, mask_b, **score_kwargs)
                                 + matching_mask_signal(corr_ba, aff_ba, tps_ba, mask_a, **score_kwargs))
        return loss
    return jnp.mean(jax.vmap(one)(
        outputs["corr"]["ab"], outputs["corr"]["ba"], theta_aff["ab"], theta_tps["ab"], theta_aff["ba"],
        theta_tps["ba"], probs["a"], probs["b"]))


def mask_label_term(outputs, options: LossOptions, inputs: TermInputs) -> jax.Array:
    """BCE of each mask against its matching pseudo-labels (fg_weight_gradient='pseudo_label'; beyond the paper)."""
    corr, theta_aff, theta_tps, logits = (outputs["corr"], outputs["theta_aff"], outputs["theta_tps"],
                                          outputs["mask_logits"])
    score_kwargs = options.score_kwargs()
    has_c = "ca" in corr and "ca" in theta_aff

    def label_loss(logits, partners):
        own = dict(own_logits=logits, own_weight=options.pseudo_label_self_weight)
        if options.pseudo_label_low is None:
            targets = matching_pseudo_labels(partners, threshold=options.pseudo_label_threshold,
                                             sharpness=options.pseudo_label_sharpness, **own, **score_kwargs)
            return pseudo_label_loss(logits, targets, balanced=options.pseudo_label_balanced)
        targets, weights = confident_pseudo_labels(partners, low=options.pseudo_label_low,
                                                   high=options.pseudo_label_threshold, **own, **score_kwargs)
        return pseudo_label_loss(logits, targets, weights, balanced=options.pseudo_label_balanced)

    def labels(logits_a, logits_b, corr_ab, corr_ba, aff_ab, tps_ab, aff_ba, tps_ba, *partner_c):
        partners_a = [(corr_ba, aff_ba, tps_ba)] + ([tuple(partner_c)] if partner_c else [])
        return 0.5 * (label_loss(logits_a, partners_a) + label_loss(logits_b, [(corr_ab, aff_ab, tps_ab)]))
    partner_c = (corr["ca"], theta_aff["ca"], theta_tps["ca"]) if has_c else ()
    return jnp.mean(jax.vmap(labels)(
        logits["a"], logits["b"], corr["ab"], corr["ba"], theta_aff["ab"], theta_tps["ab"], theta_aff["ba"],
        theta_tps["ba"], *partner_c))


def cycle_term(outputs, options: LossOptions, inputs: TermInputs) -> jax.Array:
    """Forward-backward consistency of T_AB and T_BA (SPEC §6.2), or the released code's (`cycle_compat`)."""
    theta_aff = outputs["theta_aff"]
    if options.cycle_compat:
        return 0.5 * (jnp.mean(jax.vmap(cycle_loss_compat)(theta_aff["ab"], theta_aff["ba"]))
                      + jnp.mean(jax.vmap(cycle_loss_compat)(theta_aff["ba"], theta_aff["ab"])))
    tps = _consistency_tps(outputs, options)
    return jnp.mean(jax.vmap(lambda a1, t1, a2, t2: cycle_loss(a1, t1, a2, t2, grid_size=options.cycle_grid))(
        theta_aff["ab"], tps("ab"), theta_aff["ba"], tps("ba")))


def transitivity_term(outputs, options: LossOptions, inputs: TermInputs) -> jax.Array:
    """A ← B ← C ← A consistency on triplet outputs (SPEC §6.3)."""
    theta_aff = outputs["theta_aff"]
    if "bc" not in theta_aff or "ca" not in theta_aff:
        raise ValueError("total_loss: the transitivity term needs triplet outputs (directions 'bc' and 'ca')")
    tps = _consistency_tps(outputs, options)
    return jnp.mean(jax.vmap(
        lambda a1, t1, a2, t2, a3, t3: transitivity_loss(a1, t1, a2, t2, a3, t3, grid_size=options.cycle_grid))(
        theta_aff["ab"], tps("ab"), theta_aff["bc"], tps("bc"), theta_aff["ca"], tps("ca")))


def task_term(outputs, options: LossOptions, inputs: TermInputs) -> jax.Array:
    """Cross-network consistency between the warps and the masks (SPEC §6.5)."""
    theta_aff, logits, tps = outputs["theta_aff"], outputs["mask_logits"], _consistency_tps(outputs, options)
    return jnp.mean(jax.vmap(
        lambda la, lb, a1, t1, a2, t2: task_loss(la, lb, a1, t1, a2, t2,
                                                 stop_gradient_target=options.task_stop_gradient))(
        logits["a"], logits["b"], theta_aff["ab"], tps("ab"), theta_aff["ba"], tps("ba")))


def contrastive_term(outputs, options: LossOptions, inputs: TermInputs) -> jax.Array:
    """Perceptual contrastive loss of the masks (SPEC §6.4); needs `images` {'a', 'b'} and `descriptor_fn`."""
    images, descriptor_fn, probs = inputs.images, inputs.descriptor_fn, inputs.mask_probs
    if images is None or descriptor_fn is None:
        raise ValueError("total_loss: the contrastive term needs `images` {'a', 'b'} and `descriptor_fn`")
    fg_a, bg_a = jax.vmap(masked_images)(images["a"], probs["a"])
    fg_b, bg_b = jax.vmap(masked_images)(images["b"], probs["b"])
    n = fg_a.shape[0]
    # One call of the perceptual network on all four masked batches.
    desc = descriptor_fn(jnp.concatenate([fg_a, fg_b, bg_a, bg_b], axis=0))
    d_fg_a, d_fg_b, d_bg_a, d_bg_b = (desc[i * n:(i + 1) * n] for i in range(4))
    return jnp.mean(jax.vmap(lambda *d: contrastive_loss(*d, margin=options.contrast_margin))(
        d_fg_a, d_fg_b, d_bg_a, d_bg_b))


def smoothness_term(outputs, options: LossOptions, inputs: TermInputs) -> jax.Array:
    """Colour-affinity smoothness of both masks (`edge_aware_smoothness`; beyond the paper); needs `images`."""
    if inputs.images is None:
        raise ValueError("total_loss: the smoothness term needs `images` {'a', 'b'}")

    def one(mask, image):
        return edge_aware_smoothness(mask, unnormalize_image(image), sigma=options.smoothness_sigma,
                                     radius=options.smoothness_radius, dilation=options.smoothness_dilation)
    return 0.5 * sum(jnp.mean(jax.vmap(one)(inputs.mask_probs[k], inputs.images[k])) for k in "ab")


@dataclasses.dataclass(frozen=True)
class Term:
    """One term of the objective: its batch-mean function, the λ that weighs it, and when it applies."""
    compute: Callable[..., jax.Array]
    weight: str
    applies: Callable[[LossOptions], bool] = lambda options: True


def _pseudo_labels_on(options: LossOptions) -> bool:
    return options.fg_weight == "mask" and options.fg_weight_gradient == "pseudo_label"


# name -> term, in the order they are summed. 'mask_label' is the matching term's message to the masks: same λ.
TERMS: dict[str, Term] = {
    "matching": Term(matching_term, "matching"),
    "mask_label": Term(mask_label_term, "matching", _pseudo_labels_on),
    "cycle": Term(cycle_term, "cycle"),
    "transitivity": Term(transitivity_term, "transitivity"),
    "task": Term(task_term, "task"),
    "contrastive": Term(contrastive_term, "contrastive"),
    "smoothness": Term(smoothness_term, "smoothness"),
}

# The λ names a config's `losses` block may set.
WEIGHT_NAMES = tuple(dict.fromkeys(term.weight for term in TERMS.values()))


def total_loss(outputs: Mapping, weights: Optional[Mapping[str, float]] = None, *,
               images: Optional[Mapping[str, jax.Array]] = None,
               descriptor_fn: Optional[Callable[[jax.Array], jax.Array]] = None,
               options: Optional[LossOptions] = None, true_masks: Optional[Mapping[str, jax.Array]] = None,
               **overrides) -> tuple[jax.Array, dict]:
    """L = Σ_terms λ_term · L_term over the terms of `TERMS` whose λ is non-zero (SPEC §6.6).

    outputs: batched model outputs (see the terms above). weights: λ per weighted term name, replacing the
      options' (a name left out is 0: that term is not computed); None: the options' weights.
    images: {'a', 'b'} normalised images (B, H, W, 3) and descriptor_fn: (N, H, W, 3) -> (N, c), the frozen
      perceptual network (the caller stops gradients to its weights); both needed for the contrastive term.
    true_masks: the batch's ground-truth masks {'a', 'b'} (B, H, W), read by fg_weight='true_mask' only.
    options: a `LossOptions` (None: the defaults, the paper's objective); overrides: fields of `LossOptions`
      replacing the options' (e.g. fg_weight='none').
    Returns (loss, {term: unweighted batch mean}); terms are the weighted names, plus 'mask_label' when on.
    """
    options = options or LossOptions()
    if weights is not None:
        overrides["weights"] = weights
    if overrides:
        options = dataclasses.replace(options, **overrides)
    inputs = TermInputs(images, descriptor_fn, {k: jax.nn.sigmoid(v) for k, v in outputs["mask_logits"].items()},
                        true_masks)
    terms = {name: term.compute(outputs, options, inputs) for name, term in TERMS.items()
             if options.weight(term.weight) != 0.0 and term.applies(options)}
    loss = sum(options.weight(TERMS[name].weight) * value for name, value in terms.items())
    return loss, terms
