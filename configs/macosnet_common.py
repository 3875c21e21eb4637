"""Pieces shared by the experiment configs (not a config itself: it has no get_config).

Config files load it through `sys.path` (which gets their own folder): `--config` runs them as files, from a
checkout's configs/ and from the installed `macosnet_configs` alike.
Values are SPEC §7 (the released weakalign / CNNGeo / MaCoSNet scripts); `runlocal` shrinks any experiment to a
CPU smoke run: ResNet-18 cut after layer2 at 64 px, synthetic images, a few steps.
"""
from macosnet_jax import experiment_config

# Pair counts of the training sets (DATASETS.md), to turn the scripts' epochs into steps.
PF_PASCAL_TRAIN_PAIRS = 2940   # train.csv rows (1470 pairs, each also flipped)
TSS_PAIRS = 800                # data.csv rows (400 pairs x 2 directions), transductive
INTERNET_IMAGES_100 = 300      # Airplane100 + Car100 + Horse100 (paper's subsets), transductive
SPAIR_TRAIN_PAIRS = 53340      # large layout, trn
VOC2011_TRAIN_IMAGES = 11540   # CNNGeo's synthetic-pair source (VOC 2011 trainval detection images)

ARG_SPEC = dict(runlocal=False, data_dir="", init_from="", init_torch="", image_size=240, perceptual_weights="")


def parse(arg):
    return experiment_config.parse_config_arg(arg, **ARG_SPEC)


def paper_model(image_size):
    """MatchingModel fields of the paper: ResNet-101 cut after layer3 (1024 ch at 15x15 for 240 px)."""
    return dict(depth=101, last_layer="layer3", width=64, init_identity=False,
                update_encoder_batch_stats=False, update_head_batch_stats=True)


def local_model():
    """A model that trains on 2 CPU cores: ResNet-18 to layer2, width 16 (64 px -> 8x8 grid).

    The paper's regression kernels (7, 5, valid) need a grid of at least 11x11; 3x3 kernels fit 8x8.
    """
    return dict(depth=18, last_layer="layer2", width=16, init_identity=True,
                regression_channels=(32, 16), regression_kernels=(3, 3),
                update_encoder_batch_stats=False, update_head_batch_stats=True)


def local_data():
    return dict(name="synthetic_objects", num_images=32, num_categories=4, seed=0)


def shrink_for_local_run(config):
    """Turns any experiment into a CPU smoke run (`:runlocal`): tiny model, synthetic data, few steps."""
    config.image_size = 64
    config.model = local_model()
    config.data = local_data()
    config.batch_size = 4
    config.total_steps = 4
    config.log_every_steps = 1
    config.checkpoint_every_steps = 2
    config.optimizer.lr_boundaries = [2]
    config.optimizer.lr_multipliers = [0.5]
    if "losses" in config and "perceptual_net" in config.losses:
        config.losses.perceptual_net = "strong_encoder"  # no ImageNet ResNet-50 weights on a CPU smoke run
    return config


def apply_common_args(config, arg):
    """init_from / init_torch arguments, then runlocal (last, so it wins on sizes)."""
    if arg.init_from:
        config.init_from = arg.init_from
    if arg.init_torch:
        config.init_torch.path, _, layout = arg.init_torch.partition("@")
        config.init_torch.layout = layout or config.init_torch.layout
    if arg.runlocal:
        shrink_for_local_run(config)
    return config


def joint_config(arg, *, dataset, num_examples, epochs=60, batch_size=4, eval_dataset=None):
    """MaCoSNet joint stage (SPEC §6.6, §7.3) on one dataset: matching + co-segmentation, all losses.

    Matching branch: Adam 5e-8 (the released script). The decoder is new and gets its own learning rate
    (unpublished; 1e-4 here, a choice to sweep). Batch 4, 60 epochs, early stop when validation PCK drops 0.05
    below its best (evaluated by macosnet_jax.evaluate).
    """
    config = experiment_config.base_config()
    config.stage = "joint"
    config.image_size = arg.image_size
    config.model = paper_model(arg.image_size)
    config.data = dict(name="tfds", tfds_name=dataset, split="train", data_dir=arg.data_dir,
                       crop_keep=(0.5, 1.0), flip=True)
    # fg_weight_gradient: what the matching term tells the masks (losses.total_loss): 'stop' (nothing), 'raw' (the
    # paper's formula differentiated as written: every cell towards foreground), 'centered' (cells matched better
    # than average up, the others down) or 'pseudo_label' (BCE against matching-derived labels; the CPU demo's,
    # with the keys pseudo_label_threshold / _low / _balanced / _self_weight: see configs/demo.py).
    config.losses = dict(matching=1.0, cycle=1.0, transitivity=1.0, contrastive=1.0, task=1.0,
                         fg_weight="mask", fg_weight_gradient="stop", inlier_kernel="bilinear", contrast_margin=1.0,
                         perceptual_net="imagenet_resnet50", perceptual_weights=arg.perceptual_weights,
                         cycle_grid=10, composed_consistency=True, task_stop_gradient=False)
    config.batch_size = batch_size
    steps_per_epoch = experiment_config.epochs_to_steps(1, num_examples, batch_size)
    config.total_steps = epochs * steps_per_epoch
    config.log_every_steps = 20
    config.checkpoint_every_steps = steps_per_epoch
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 5e-8
    config.optimizer.param_groups = [("(^|/)decoder(/|$)", "decoder")]
    config.optimizer.group_lr = {"decoder": 1e-4}
    config.evaluation = dict(dataset=eval_dataset or dataset, split="validation" if eval_dataset is None else "test",
                             data_dir=arg.data_dir,
                             every_steps=steps_per_epoch, early_stop_drop=0.05)
    config.init_torch.layout = "weakalign"
    # The weak stage (ours or weakalign's torch checkpoint) trained a MatchingModel: it is MaCoSNet's 'matching'.
    config.init_torch.prefix = "matching"
    config.init_prefix = "matching"
    return apply_common_args(config, arg)


# ----------------------------------------------------------------------------------------------------------------
# DINOv2 backbone (configs/*_dinov2.py): MaCoSNet's joint stage with a DINOv2 ViT as the shared encoder.

# The official checkpoints' sizes (facebookresearch/dinov2 hub models dinov2_vit{s,b,l}14[_reg4], patch 14, a
# 37x37 positional grid): the vit_* fields of config.model (models/backbones.py). The giant size (SwiGLU FFN) is
# not a config choice.
DINOV2_SIZES = {"small": dict(vit_embed_dim=384, vit_depth=12, vit_heads=6),
                "base": dict(vit_embed_dim=768, vit_depth=12, vit_heads=12),
                "large": dict(vit_embed_dim=1024, vit_depth=24, vit_heads=16)}
DINOV2_ARG_SPEC = dict(runlocal=False, data_dir="", init_from="", dinov2="", vit="small", registers=0,
                       image_size=224, encoder="frozen", encoder_lr=1e-6, lr=1e-4)


def parse_dinov2(arg):
    return experiment_config.parse_config_arg(arg, **DINOV2_ARG_SPEC)


def dinov2_model(vit="small", registers=0):
    """MatchingModel fields of a DINOv2 ViT encoder (official size `vit`, `registers` 0 or 4) with new heads.

    The heads start at the identity (no weakalign stage trained them). At 224 px the correlation lies on the 16x16
    patch grid: the paper's (7, 5) VALID convs fit it (16 -> 10 -> 6).
    """
    if vit not in DINOV2_SIZES:
        raise ValueError(f"config argument vit={vit!r}: expected one of {sorted(DINOV2_SIZES)}")
    return dict(backbone="dinov2", **DINOV2_SIZES[vit], vit_registers=int(registers), vit_pos_grid=37,
                init_identity=True, update_head_batch_stats=True)


def dinov2_local_model():
    """A random ViT that trains on 2 CPU cores: embed 32, depth 2, heads 2 at 56 px (a 4x4 patch grid, its own 4x4
    positional grid); (3, 2) VALID head convs fit the 4x4 correlation."""
    return dict(backbone="dinov2", vit_embed_dim=32, vit_depth=2, vit_heads=2, vit_registers=0, vit_pos_grid=4,
                init_identity=True, regression_channels=(16, 8), regression_kernels=(3, 2),
                update_head_batch_stats=True)


def dinov2_joint_config(arg, *, dataset, num_examples, epochs, batch_size=4):
    """MaCoSNet joint stage (all five losses of SPEC §6.6; no keypoints, no masks) with a DINOv2 encoder.

    Weights: the official DINOv2 file (`:dinov2=PATH`) into matching/encoder through config.init_torch (layout
    'dinov2'); heads and decoder start from scratch. The contrastive loss's perceptual network F is the frozen
    copy of that initial (pretrained) encoder ('strong_encoder'), so no ImageNet ResNet-50 file is needed.
    Optimizer groups: 'encoder' (the ViT) frozen (`:encoder=frozen`, default) or fine-tuned at `encoder_lr`
    (`:encoder=finetune`); 'decoder' and the heads at `lr` (Adam).
    """
    config = joint_config(parse("image_size=%d" % arg.image_size), dataset=dataset, num_examples=num_examples,
                          epochs=epochs, batch_size=batch_size)
    config.model = dinov2_model(arg.vit, arg.registers)
    config.data.data_dir = arg.data_dir
    config.evaluation.data_dir = arg.data_dir
    config.losses.perceptual_net = "strong_encoder"
    config.losses.perceptual_weights = ""
    config.optimizer.learning_rate = arg.lr
    config.optimizer.param_groups = [("(^|/)encoder(/|$)", "encoder"), ("(^|/)decoder(/|$)", "decoder")]
    config.optimizer.group_lr = {"decoder": arg.lr}
    if arg.encoder == "frozen":
        config.optimizer.frozen_groups = ["encoder"]
    elif arg.encoder == "finetune":
        config.optimizer.group_lr["encoder"] = arg.encoder_lr
    else:
        raise ValueError(f"config argument encoder={arg.encoder!r}: expected frozen or finetune")
    config.init_torch.update(path=arg.dinov2, layout="dinov2", prefix="matching/encoder")
    config.init_prefix = "matching"
    if arg.init_from:
        config.init_from = arg.init_from
    if arg.runlocal:
        shrink_dinov2_for_local_run(config)
    return config


def shrink_dinov2_for_local_run(config):
    """`:runlocal` of a DINOv2 config: a tiny random ViT at 56 px, 3 steps, one validation on the same tfds data
    (build the builders' dummy data into `:data_dir`: see the config's docstring)."""
    config.image_size = 56
    config.model = dinov2_local_model()
    config.init_torch.path = ""  # a random ViT: the official weights have another size
    config.batch_size = 4
    config.total_steps = 3
    config.log_every_steps = 1
    config.checkpoint_every_steps = 3
    config.evaluation.every_steps = 3
    config.optimizer.lr_boundaries = [2]
    config.optimizer.lr_multipliers = [0.5]
    return config
