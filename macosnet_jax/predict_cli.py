"""`macosnet-predict`: match and co-segment the user's own images, and draw the result.

Pair mode:
    macosnet-predict A.jpg B.png --checkpoint weakalign.pth.tar --layout weakalign --out results/
    macosnet-predict A.jpg B.png --random-init --depth 18 --width 8 --last-layer layer2 --image-size 64 \
        --regression-kernels 3,3 --out r/      (an untrained model: for testing the pipeline)
  writes into --out:
    warped_source.png    A warped into B's frame at B's size (B's pixel q shows A at Aff(TPS(q)))
    match.png            A, B, warped A, blend of warped A and B (+ both mask overlays when the model has masks)
    mask_a.png, mask_b.png, mask_overlay_a.png, mask_overlay_b.png   (models with a co-segmentation decoder only:
                         0/255 masks at each image's size, and the tinted overlays)
    keypoints.png        with --points: B's points and where they land in A
    result.json          theta_aff, theta_tps, image sizes, B's points and their transfer into A (1-indexed pixels)
  --points: B's points as JSON ([[x, y], ...] or {"points": [[x, y], ...]}) or CSV (one "x,y" per line, an
  optional header line), 1-indexed pixel coordinates of image B.

Collection mode (a folder of images of one category):
    macosnet-predict --collection photos/ --checkpoint ... --out results/ [--partners 5]
  writes masks/<stem>.png (0/255 at each image's size), overlays/<stem>.png, contact_sheet.png, collection.json.
  Each image's mask is the mean of its sigma(M) over partner images of the folder
  (evaluation.coseg_driver.collection_masks).

Errors a user can fix (paths, images, a checkpoint that does not fit) are one line `macosnet-predict: error: ...`
with exit status 2, reported before the model is built, and nothing is written; `--verbose` (or
MACOSNET_VERBOSE=1) shows the traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import sys

import numpy as np

from macosnet_jax import errors, host_memory, user_files, xla_cpu_flags

PROG = "macosnet-predict"


# Errors about the user's input (paths, files, arguments): one line, exit status 2.
CliError = user_files.InputError
load_image, load_points = user_files.load_image, user_files.load_points
read_collection, list_collection = user_files.read_collection, user_files.list_collection
IMAGE_EXTENSIONS = user_files.IMAGE_EXTENSIONS


# --------------------------------------------------------------------------------------------------------------
# The model.


def random_variables(model, seed, image_size):
    """Random variables of `model`'s shapes, drawn with numpy (for testing the pipeline without weights).

    model: a MatchingModel or MaCoSNet (any module called as model.init(rng, image_a, image_b, train=False) on
    (1, image_size, image_size, 3) images).

    Why not `model.init`: compiling Flax's init graph (threefry draws for every kernel) takes minutes on a small,
    busy CPU, far more than the forward pass; only the shapes are needed (`jax.eval_shape`). Kernels are
    He-normal (fan-in), biases 0, BatchNorm at identity (scale 1, bias 0, mean 0, var 1); the regression heads'
    final layers get the identity transform as bias and a 1e-3-scaled kernel, so the untrained matcher predicts
    warps near the identity (as `init_identity=True` does). Deterministic in `seed`.
    """
    import flax  # noqa: PLC0415
    import jax  # noqa: PLC0415

    from macosnet_jax.models import regression  # noqa: PLC0415

    images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), np.float32)
    shapes = jax.eval_shape(lambda a, b: model.init(jax.random.PRNGKey(0), a, b, train=False), images, images)
    rng = np.random.default_rng(seed)
    flat = {}
    for path, leaf in sorted(flax.traverse_util.flatten_dict(shapes).items()):
        name, shape = path[-1], tuple(leaf.shape)
        fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
        if name == "kernel":
            scale = 1e-3 if "linear" in path else 1.0
            value = rng.normal(size=shape) * scale * np.sqrt(2.0 / fan_in)
        elif name == "bias" and "linear" in path:
            value = regression.identity_theta(shape[0])
        elif name in ("scale", "var"):
            value = np.ones(shape)
        else:  # biases, BatchNorm offsets and means
            value = np.zeros(shape)
        flat[path] = np.asarray(value, leaf.dtype)
    return flax.traverse_util.unflatten_dict(flat)


def checkpoint_layout(args):
    """--layout, or when it is not given: 'macosnet' for a directory (our work dir), 'weakalign' for a file."""
    path = args.checkpoint
    if not os.path.exists(path):
        raise CliError(f"checkpoint not found: {path} (a torch .pth/.pth.tar file, or the work dir of a "
                       "macosnet run)")
    is_dir = os.path.isdir(path)
    layout = args.layout or ("macosnet" if is_dir else "weakalign")
    if is_dir and layout != "macosnet":
        raise CliError(f"--checkpoint {path} is a directory, but --layout {layout} reads a torch checkpoint "
                       "file; drop --layout to read a macosnet work dir")
    if not is_dir and layout == "macosnet":
        raise CliError(f"--checkpoint {path} is a file, but --layout macosnet reads a training work dir")
    return layout


def weights_mismatch_message(error, path, image_size) -> str:
    """One line for torch weights that do not fit: the first tensors that differ, and the likely flag."""
    parts = [f"{name} is {got} there, the model expects {want}" for name, got, want, _ in error.misshaped[:2]]
    parts += [f"missing {name}" for name in error.missing[:2 - min(2, len(parts))]]
    counts = (f"{len(error.misshaped)} tensors of other shapes, {len(error.missing)} missing, "
              f"{len(error.unexpected)} unexpected")
    channels = error.correlation_channels()
    if channels:
        fits = int(round(image_size * (channels[0] / channels[1]) ** 0.5))
        hint = (f"; the first regression layer's {channels[0]} input channels (correlation cells) fit "
                f"--image-size {fits}, not {image_size}")
    elif error.missing:
        hint = "; is --layout right (weakalign | cnngeo)?"
    else:
        hint = ""
    return f"the weights in {path} do not fit the model: {'; '.join(parts)} ({counts}){hint}"


def build_matcher(args):
    """A predict.Matcher from --checkpoint/--layout, or a random MatchingModel (--random-init, see
    `random_variables`)."""
    from macosnet_jax import predict  # noqa: PLC0415 (heavy: JAX, Flax)

    if args.checkpoint:
        layout = checkpoint_layout(args)
        # Our own work dirs carry their model and image size in config.json; torch checkpoints take --image-size.
        size = None if layout == "macosnet" else args.image_size
        from macosnet_jax import checkpoint, weights  # noqa: PLC0415
        try:
            return predict.Matcher.from_checkpoint(args.checkpoint, layout=layout, image_size=size)
        except weights.WeightsMismatchError as error:
            raise CliError(weights_mismatch_message(error, args.checkpoint, args.image_size)) from error
        except (FileNotFoundError, KeyError, ValueError, checkpoint.CheckpointError) as error:
            raise CliError(f"--checkpoint {args.checkpoint}: {str(error).strip()}") from error
    from macosnet_jax.models import factory  # noqa: PLC0415

    fields = dict(depth=args.depth, last_layer=args.last_layer, width=args.width,
                  regression_channels=args.regression_channels, regression_kernels=args.regression_kernels)
    model = factory.build_model(args.model, args.image_size, **fields)
    return predict.Matcher(model, random_variables(model, args.seed, args.image_size), args.image_size)


def model_description(args):
    if args.checkpoint:
        return {"checkpoint": os.fspath(args.checkpoint), "layout": checkpoint_layout(args),
                "image_size": args.image_size}
    return {"random_init": True, "model": args.model, "seed": args.seed, "depth": args.depth, "width": args.width,
            "last_layer": args.last_layer, "image_size": args.image_size,
            "regression_channels": list(args.regression_channels), "regression_kernels": list(args.regression_kernels)}


# --------------------------------------------------------------------------------------------------------------
# The two modes.


def _list(array):
    return None if array is None else np.asarray(array, np.float64).tolist()


def run_pair(matcher, args, out):
    """Pair mode: match A and B, write the pictures and result.json; returns the dict written to result.json."""
    from macosnet_jax import visualize  # noqa: PLC0415
    from macosnet_jax.evaluation.keypoints import transfer_points  # noqa: PLC0415
    from macosnet_jax.evaluation.masks import save_mask_png  # noqa: PLC0415

    image_a, image_b = load_image(args.image_a), load_image(args.image_b)
    points_b = load_points(args.points) if args.points else None
    prediction = matcher.match(image_a, image_b)
    theta_aff = np.asarray(prediction["theta_aff"], np.float32)
    theta_tps = np.asarray(prediction["theta_tps"], np.float32)
    mask_a, mask_b = prediction.get("mask_a"), prediction.get("mask_b")

    warped = visualize.warp_source(image_a, theta_aff, theta_tps, image_b.shape[:2])
    files = {"warped_source": visualize.save_image(warped, out / "warped_source.png")}
    files["match"] = visualize.save_figure(visualize.match_figure(image_a, image_b, warped, mask_a, mask_b),
                                           out / "match.png")
    for side, image, mask, color in (("a", image_a, mask_a, visualize.MASK_COLOR_A),
                                     ("b", image_b, mask_b, visualize.MASK_COLOR_B)):
        if mask is None:
            continue
        fg = visualize.foreground(mask, *image.shape[:2])
        save_mask_png(out / f"mask_{side}.png", fg)
        files[f"mask_{side}"] = out / f"mask_{side}.png"
        files[f"mask_overlay_{side}"] = visualize.save_image(visualize.overlay_mask(image, mask, color),
                                                            out / f"mask_overlay_{side}.png")
    points_a = None
    if points_b is not None:
        points_a = transfer_points(points_b, theta_aff, theta_tps, image_a.shape[:2], image_b.shape[:2])
        files["keypoints"] = visualize.save_figure(visualize.keypoint_figure(image_a, image_b, points_b, points_a),
                                                   out / "keypoints.png")
    result = {
        "image_a": os.fspath(args.image_a), "image_b": os.fspath(args.image_b),
        "size_a": list(image_a.shape[:2]), "size_b": list(image_b.shape[:2]),
        "theta_aff": _list(theta_aff), "theta_tps": _list(theta_tps),
        "map": "sampling map B -> A: a point p of B (normalised, corner-aligned) lands at Aff(TPS(p)) in A",
        "points_b": _list(points_b), "points_a": _list(points_a),
        "points_convention": "(x, y) 1-indexed pixel coordinates",
        "has_masks": mask_a is not None,
        "model": model_description(args),
        "files": {k: os.fspath(v.name) for k, v in files.items()},
    }
    (out / "result.json").write_text(json.dumps(result, indent=1))
    return result


def run_collection(matcher, args, out, collection=None):
    """Collection mode: a mask per image aggregated over partners, overlays, a contact sheet, collection.json.
    `collection`: (files, images) from `read_collection` (read here when None)."""
    from macosnet_jax import visualize  # noqa: PLC0415
    from macosnet_jax.evaluation.coseg_driver import collection_masks  # noqa: PLC0415
    from macosnet_jax.evaluation.masks import save_mask_png  # noqa: PLC0415

    files, images = collection or read_collection(args.collection, args.skip_bad)
    probabilities = collection_masks(images, matcher.match, partners=args.partners)
    if probabilities and probabilities[0] is None:
        raise CliError("this model has no co-segmentation decoder (it predicts no masks); collection mode needs one")
    masks = []
    (out / "masks").mkdir(parents=True, exist_ok=True)
    for path, image, probability in zip(files, images, probabilities):
        fg = visualize.foreground(probability, *image.shape[:2])
        save_mask_png(out / "masks" / f"{path.stem}.png", fg)
        visualize.save_image(visualize.overlay_mask(image, probability), out / "overlays" / f"{path.stem}.png")
        masks.append({"image": path.name, "mask": f"masks/{path.stem}.png", "foreground_fraction": float(fg.mean())})
    sheet = visualize.contact_sheet(images, probabilities, titles=[p.stem for p in files])
    visualize.save_figure(sheet, out / "contact_sheet.png")
    result = {"folder": os.fspath(args.collection), "partners": args.partners,
              "skipped": sorted(p.name for p in list_collection(args.collection) if p not in files),
              "aggregation": "each image's sigma(M) averaged over the cyclic partner pairs {i, i+k}, k = 1..partners",
              "images": masks, "model": model_description(args)}
    (out / "collection.json").write_text(json.dumps(result, indent=1))
    return result


# --------------------------------------------------------------------------------------------------------------
# Entry points.


def _int_tuple(text):
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from error


def parse_args(argv):
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:] + [user_files.READING_RULE]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image_a", nargs="?", help="source image A (the image B's points are transferred into)")
    parser.add_argument("image_b", nargs="?", help="target image B")
    parser.add_argument("--collection", help="folder of images of one category (collection mode)")
    parser.add_argument("--out", required=True, help="output folder (created)")
    parser.add_argument("--checkpoint", help="torch checkpoint (.pth / .pth.tar), or our training work dir")
    parser.add_argument("--layout", default=None, choices=("weakalign", "cnngeo", "macosnet"),
                        help="checkpoint layout: weakalign | cnngeo (torch files) | macosnet (our work dirs); "
                        "default: macosnet for a directory, weakalign for a file")
    parser.add_argument("--random-init", action="store_true", help="random MatchingModel instead of a checkpoint "
                        "(for testing the pipeline)")
    parser.add_argument("--model", choices=("matching", "macosnet"), default="macosnet",
                        help="--random-init: MatchingModel (no masks) or the joint MaCoSNet (matching + masks)")
    parser.add_argument("--depth", type=int, default=18, help="--random-init: ResNet depth")
    parser.add_argument("--width", type=int, default=64, help="--random-init: ResNet base width")
    parser.add_argument("--last-layer", default="layer3", help="--random-init: last ResNet layer")
    parser.add_argument("--seed", type=int, default=0, help="--random-init: PRNG seed")
    parser.add_argument("--regression-channels", type=_int_tuple, default=(128, 64),
                        help="--random-init: FeatureRegression conv channels, e.g. 128,64")
    parser.add_argument("--regression-kernels", type=_int_tuple, default=(7, 5),
                        help="--random-init: FeatureRegression kernel sizes, e.g. 7,5 (they must fit the feature grid)")
    parser.add_argument("--image-size", type=int, default=240, help="network input size S")
    parser.add_argument("--points", help="JSON/CSV file of B's points (x, y), 1-indexed pixels")
    parser.add_argument("--partners", type=int, default=5, help="collection mode: partner offsets per image")
    parser.add_argument("--skip-bad", action="store_true", help="collection mode: go on without the images that "
                        "cannot be read (they are named in a warning) instead of stopping")
    parser.add_argument("--host-malloc", choices=host_memory.MODES, default=host_memory.default_mode(),
                        help="keep freed host memory for reuse (macosnet_jax.host_memory; auto: on when JAX can only "
                             "use the CPU): the paper-scale cascade's buffers are not page-faulted in afresh per call")
    parser.add_argument("--xla-cpu-conv", choices=xla_cpu_flags.MODES, default=xla_cpu_flags.default_mode(),
                        help="run convolutions with XLA CPU's Eigen kernels (macosnet_jax.xla_cpu_flags; auto: on when "
                             "JAX can only use the CPU): the paper-scale encoder's forward is faster")
    parser.add_argument("--verbose", action="store_true", help="show the traceback of errors a user can fix "
                        "(also MACOSNET_VERBOSE=1)")
    args = parser.parse_args(argv)
    if args.collection and (args.image_a or args.image_b):
        parser.error("give either two images or --collection, not both")
    if not args.collection and not (args.image_a and args.image_b):
        parser.error("give two images (A B) or --collection FOLDER")
    if bool(args.checkpoint) == bool(args.random_init):
        parser.error("give exactly one of --checkpoint PATH or --random-init")
    if args.skip_bad and not args.collection:
        parser.error("--skip-bad applies to collection mode only")
    if args.collection and args.points:
        parser.error("--points applies to pair mode only")
    if args.partners < 1:
        parser.error("--partners must be >= 1")
    return args


def main(argv=None):
    """Runs the command; returns the exit status (0 ok, 2 bad input). argv excludes the program name."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    host_memory.keep_freed_memory(args.host_malloc)  # both before anything starts JAX's backend
    xla_cpu_flags.prefer_eigen_convolutions(args.xla_cpu_conv)
    out = pathlib.Path(args.out)
    out_existed = out.exists()
    collection = None
    try:
        # Check every input before the (slow) model build, so a typo fails fast.
        if args.collection:
            collection = read_collection(args.collection, args.skip_bad)
        else:
            for path in (args.image_a, args.image_b):
                load_image(path)
            if args.points:
                load_points(args.points)
        matcher = build_matcher(args)
        out.mkdir(parents=True, exist_ok=True)
        if args.collection:
            result = run_collection(matcher, args, out, collection)
            print(f"{PROG}: wrote {len(result['images'])} masks and contact_sheet.png to {out}")
        else:
            result = run_pair(matcher, args, out)
            print(f"{PROG}: wrote {', '.join(sorted(result['files'].values()))} and result.json to {out}")
    except errors.UserError as error:
        if not out_existed:
            shutil.rmtree(out, ignore_errors=True)  # leave nothing behind
        if args.verbose or errors.verbose_requested([]):
            raise
        print(f"{PROG}: error: {errors.one_line(error)}", file=sys.stderr)
        return errors.EXIT_USER_ERROR
    return 0


def run():
    """Console-script entry point (pyproject: macosnet-predict = macosnet_jax.predict_cli:run)."""
    sys.exit(main())


if __name__ == "__main__":
    run()
