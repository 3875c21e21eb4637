"""The CPU demo (the README's first command): strong synthetic stage -> joint MaCoSNet stage -> evaluation.

Everything runs on built-in `synthetic_objects` data (procedural categories of textured objects, each category
with its own scene behind them and distractor objects, with ground-truth masks and landmarks), a thin ResNet-18
cut after layer2 (96 px -> 12x12 grid), and step budgets (not wall-time budgets: the result must not depend on how
busy the machine is).

Launch:
  macosnet-demo --workdir runs/demo                       # this config
  macosnet-demo --workdir runs/demo_q --config configs/demo.py:quick   # a 1-minute smoke run (tests use it)
  macosnet-demo --workdir runs/demo --config.variants=matching_only,coseg_only   # + each stream alone
  macosnet-demo --workdir runs/demo_clutter --config configs/demo.py:background=clutter  # each image its own clutter
Expected on a 2-core CPU (measured: 5 min 57 s inside the demo, 7 min 2 s with the install; the two stream-alone
stages about 4 min more): see docs/results.md. The demo prints PCK@0.1 (kp_extent and img-size conventions) of the
trained models beside the identity transform, and co-segmentation P/J beside the all-foreground and centred-box
masks.
"""
import ml_collections

from macosnet_jax import experiment_config


def get_config(arg=None):
    arg = experiment_config.parse_config_arg(arg, quick=False, seed=0, background="backdrop")
    config = ml_collections.ConfigDict()
    config.seed = arg.seed
    config.image_size = 96
    config.model = dict(depth=18, last_layer="layer2", width=16, init_identity=True,
                        update_encoder_batch_stats=True, update_head_batch_stats=True)
    # Training images and held-out evaluation images: different seeds, so test instances (textures, poses,
    # backgrounds) are new; the categories (shape families) are shared.
    # background: 'backdrop' (each category's scene, seen by each image through its own pose, apart from the object:
    # background that matches across a pair but under another warp, the clutter that misleads unweighted matching;
    # data/synthetic.py) or 'clutter' (each image its own). On 'backdrop' ground-truth masks as foreground weights
    # raise matching's PCK@0.1 from 0.171 to 0.222 (3 seeds, docs/ablation.md); on 'clutter' they lower it: there
    # the masks have no background to discount.
    config.data = dict(name="synthetic_objects", num_images=720, num_categories=6, seed=arg.seed, augment=False,
                       background=arg.background)
    config.eval = dict(num_images=240, seed=1000 + arg.seed, num_pairs=200, alphas=(0.05, 0.1),
                       num_pictures=4)

    strong = experiment_config.base_config()
    strong.stage = "strong_synthetic"
    # 1200 strong and 800 joint steps, chosen on the clutter data's validation set (evaluation seed 2000, not the test
    # pairs): both PCK and J beat 600 + 400 (PCK@0.1 0.167 -> 0.201, J 0.559 -> 0.579); 1200 + 400 had PCK 0.2205 but
    # J 0.522 (docs/demo_objective.md, "Step budgets").
    strong.total_steps = 1200
    strong.batch_size = 8  # affine pairs, and as many TPS pairs
    strong.optimizer.learning_rate = 1e-3
    strong.log_every_steps = 50
    strong.checkpoint_every_steps = 100
    strong.keep_checkpoints = 2
    config.strong = strong

    joint = experiment_config.base_config()
    joint.stage = "joint"
    joint.total_steps = 800
    joint.batch_size = 4
    joint.init_prefix = "matching"  # the strong stage's MatchingModel weights go under MaCoSNet's 'matching'
    joint.optimizer.learning_rate = 1e-4  # the encoder: its features serve both the matcher and the decoder
    joint.optimizer.param_groups = [("^decoder/", "decoder"), ("^matching/(affine|tps)_regression/", "heads")]
    # The decoder starts from scratch. The regression heads keep close to what the strong stage taught them: at
    # the encoder's rate the weak losses (cycle and transitivity are smallest for identity-like warps) pull θ
    # away from the object, PCK@0.1 0.128 -> 0.100 between joint steps 300 and 500; at 3e-5 PCK rises instead
    # (docs/demo_objective.md, "Longer joint training").
    joint.optimizer.group_lr = {"decoder": 1e-2, "heads": 3e-5}
    joint.log_every_steps = 25
    joint.checkpoint_every_steps = 50
    joint.keep_checkpoints = 2
    # Mask signals (docs/demo_objective.md, "Why the masks do not find the object"): the paper's objective prefers empty
    # masks here (F = the strong encoder is not semantic: d⁺ is smallest for empty foregrounds, and with margin
    # 1.0 d⁻ drives the masks to all-foreground). What does locate the common object is matching: the masks learn
    # from pseudo-labels of where the predicted warp's match is the cell's best match ('pseudo_label', see
    # losses.matching_pseudo_labels; A is labelled by its partners B and C, B by A), the task target is
    # stop-gradient (otherwise the term minimises mask entropy and saturates whatever side p starts on), and the
    # contrastive term keeps a small weight with m = 0.1 (weight 1.0 drags every mask below 0.5: J 0.39 -> 0).
    # The labels are confident ones (losses.confident_pseudo_labels): foreground where z > 1.3, background where
    # z < 0.5, the band between ignored, and the BCE balances foreground and background pixels (soft labels made
    # the masks regress to their conditional mean); z also holds the mask's own pooled logits (self-training,
    # weight 1), which rank cells better than matching alone. Chosen in docs/demo_objective.md, "Confident, self-trained
    # pseudo-labels".
    # Cycle and transitivity weigh 0.1: they are smallest for identity-like warps and, beside the tiny inlier term
    # (≈ -0.05), pull θ towards the identity as the joint stage goes on. On the validation set (evaluation seed 2000,
    # 3 seeds, 800 joint steps) λ 0.1 reaches PCK@0.1 0.230 and J 0.687 where 0.3 reaches 0.204 and 0.680; past 800
    # steps PCK falls with either (docs/demo_objective.md, "Joint steps and the consistency weight").
    joint.losses = dict(matching=1.0, cycle=0.1, transitivity=0.1, contrastive=0.1, task=1.0, fg_weight="mask",
                        fg_weight_gradient="pseudo_label", pseudo_label_threshold=1.3, pseudo_label_low=0.5,
                        pseudo_label_balanced=True, pseudo_label_self_weight=1.0, pseudo_label_sharpness=10.0,
                        inlier_kernel="bilinear", cycle_grid=10, composed_consistency=True, task_stop_gradient=True,
                        contrast_margin=0.1, perceptual_net="strong_encoder", smoothness=0.3,
                        smoothness_sigma=0.1, smoothness_radius=3, smoothness_dilation=3)
    # Colour-edge smoothness (losses.edge_aware_smoothness, beyond the paper): the pseudo-labels are 8×8-pixel cells,
    # so the masks alone are blobs around the object; the relaxed Potts term pulls their boundaries onto colour
    # edges. On the validation set (evaluation seed 2000) J 0.567 -> 0.674 (λ 0.3, neighbours up to 9 px: radius 3,
    # dilation 3); λ 0.15 / 0.3 / 0.5 with a 4-px window: J 0.602 / 0.621 / 0.638; λ 1.0 makes the masks
    # all-foreground (docs/demo_objective.md, "Masks on the object's edges").
    config.joint = joint
    # Stream-alone rows of the table (macosnet_jax.demo.JOINT_VARIANTS, comma-separated): the joint stage again from
    # the same strong weights with the same data and steps, with one stream's losses only. Off by default: each
    # costs about a joint stage (matching_only 2.6 min, coseg_only 1.3 min on 2 cores), which would take the demo
    # past 10 minutes; `--config.variants=matching_only,coseg_only` adds both (docs/results.md).
    config.variants = ""

    if arg.quick:  # smoke run: a handful of steps on a few images (tests, CI)
        config.image_size = 64
        config.model.width = 8
        config.model.regression_kernels = (3, 3)  # an 8x8 grid at 64 px
        config.data.num_images = 48
        config.eval.num_images = 24
        config.eval.num_pairs = 12
        config.eval.num_pictures = 1
        config.variants = "matching_only,coseg_only"  # the smoke run covers the stream-alone stages
        for stage, steps in ((strong, 4), (joint, 3)):
            stage.total_steps = steps
            stage.batch_size = 4
            stage.log_every_steps = 1
            stage.checkpoint_every_steps = 2
    return config
