"""PyTorch checkpoints -> Flax variables, without torch.

Reading (`load_torch_state_dict`): torch's zip format (torch >= 1.6), torch's legacy format (the pickled stream
of weakalign's and CNNGeo's released `.pth.tar` files) and `.npz` files keyed by torch names. Pickles are read
by a restricted Unpickler that only rebuilds tensors from storages (plus OrderedDict, argparse.Namespace and numpy
scalars, which training scripts store beside the weights) and refuses every other global: a checkpoint is data,
and unpickling arbitrary globals would execute arbitrary code.

Converting (`load_torch_checkpoint`): the target Flax variables are enumerated from the model itself (an
abstract `init`), and each one names the torch tensor it needs. Conv OIHW -> HWIO; BatchNorm weight/bias ->
scale/bias (params), running_mean/var -> mean/var (batch_stats); Linear transposed, and the regression head's
1600-d input permuted from torch's (C, H, W) flatten to NHWC's (H, W, C). Every torch tensor must be consumed and
every Flax variable filled (num_batches_tracked is ignored; torchvision's classifier `fc.*` and layers beyond
the requested last layer are dropped on purpose), else a ValueError lists the missing, unexpected and
mis-shaped names.
"""
from __future__ import annotations

import argparse
import collections
import io
import os
import pickle
import re
import struct
import zipfile
from typing import Any, Mapping

import flax.traverse_util
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from macosnet_jax.models import backbones
from macosnet_jax.models import resnet as resnet_lib
from macosnet_jax.models.matching import MatchingModel
from macosnet_jax.models.regression import identity_theta

# ----------------------------------------------------------------------------------------------------------------
# Reading torch files.

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class _StorageType:
    """Stands for a torch.<X>Storage class in the pickle: only its dtype matters."""

    def __init__(self, name):
        self.name = name
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


class _Storage:
    """A flat typed buffer, possibly filled after unpickling (legacy format) and possibly a view of another."""

    def __init__(self, dtype, numel, root=None, offset=0):
        self.dtype, self.numel, self.root, self.offset = dtype, numel, root, offset
        self.data = None

    def array(self) -> np.ndarray:
        if self.root is not None:
            return self.root.array()[self.offset:self.offset + self.numel]
        if self.data is None:
            raise ValueError("torch checkpoint: a tensor refers to a storage whose data is missing from the file")
        return self.data


class _LazyTensor:
    """A tensor to build once the storages hold data: (storage, offset, size, stride) as torch pickles it."""

    def __init__(self, storage, offset, size, stride):
        if not isinstance(storage, _Storage):
            raise pickle.UnpicklingError("torch checkpoint: _rebuild_tensor_v2 without a storage")
        self.storage, self.offset, self.size, self.stride = storage, int(offset), tuple(size), tuple(stride)

    def materialize(self) -> np.ndarray:
        flat = self.storage.array()
        needed = self.offset + sum((s - 1) * st for s, st in zip(self.size, self.stride)) + 1
        if 0 not in self.size and needed > flat.size:
            raise ValueError(f"torch checkpoint: tensor of size {self.size} overruns its storage ({flat.size})")
        itemsize = flat.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset:], shape=self.size, strides=[s * itemsize for s in self.stride])
        array = np.array(view)  # own the memory
        if array.dtype == ml_dtypes.bfloat16:
            array = array.astype(np.float32)
        return array


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    return data


def _numpy_scalar(dtype, data=None):
    return np.frombuffer(data, dtype=dtype, count=1)[0] if data is not None else dtype.type()


_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("argparse", "Namespace"): argparse.Namespace,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy", "dtype"): np.dtype,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler for torch checkpoints: tensors via persistent ids, a short allow-list of globals, nothing else."""

    def __init__(self, file, persistent_load_fn, source):
        super().__init__(file, encoding="latin1")
        self._persistent_load_fn = persistent_load_fn
        self._source = source

    def find_class(self, module, name):
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if (module, name) in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[(module, name)]
        raise pickle.UnpicklingError(
            f"{self._source}: refusing to unpickle global '{module}.{name}' (only tensors, OrderedDict, "
            "argparse.Namespace and numpy scalars are allowed in a checkpoint)")

    def persistent_load(self, pid):
        return self._persistent_load_fn(pid)


def _as_str(value):
    return value.decode("ascii") if isinstance(value, bytes) else value


def _materialize(obj):
    """Replaces every _LazyTensor inside dicts / lists / tuples / Namespaces by a numpy array."""
    if isinstance(obj, _LazyTensor):
        return obj.materialize()
    if isinstance(obj, dict):
        return type(obj)((k, _materialize(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialize(v) for v in obj)
    if isinstance(obj, argparse.Namespace):
        return argparse.Namespace(**{k: _materialize(v) for k, v in vars(obj).items()})
    return obj


def _load_zip(path) -> Any:
    """torch >= 1.6 format: a zip with <prefix>/data.pkl and one raw file per storage in <prefix>/data/<key>."""
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("data.pkl")]
        if len(pickles) != 1:
            raise ValueError(f"{path}: torch zip checkpoint must hold exactly one data.pkl, found {pickles}")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = "little"
        if prefix + "byteorder" in names:
            byteorder = archive.read(prefix + "byteorder").decode().strip()
        storages = {}

        def persistent_load(pid):
            if _as_str(pid[0]) != "storage":
                raise pickle.UnpicklingError(f"{path}: unknown persistent id {pid[0]!r}")
            storage_type, key, _location, numel = pid[1:5]
            key = _as_str(key)
            if key not in storages:
                if not isinstance(storage_type, _StorageType):
                    raise pickle.UnpicklingError(f"{path}: storage {key} has unsupported type {storage_type!r}")
                dtype = storage_type.dtype.newbyteorder("<" if byteorder == "little" else ">")
                storage = _Storage(dtype, numel)
                raw = archive.read(f"{prefix}data/{key}")
                storage.data = np.frombuffer(raw, dtype=dtype, count=numel).astype(storage_type.dtype)
                storages[key] = storage
            return storages[key]

        with archive.open(pickles[0]) as f:
            result = _RestrictedUnpickler(io.BytesIO(f.read()), persistent_load, path).load()
    return _materialize(result)


class _NoGlobalsUnpickler(pickle.Unpickler):
    def __init__(self, file, source):
        super().__init__(file, encoding="latin1")
        self._source = source

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"{self._source}: unexpected global {module}.{name} in a torch file header")


def _load_plain(f, source):
    try:
        return _NoGlobalsUnpickler(f, source).load()
    except (pickle.UnpicklingError, EOFError, ValueError) as e:
        raise ValueError(f"{source}: not a readable torch checkpoint (zip or legacy format): {e}") from e


def _load_legacy(path) -> Any:
    """Pre-1.6 torch format: pickles (magic, protocol, sys_info, object, storage keys), then raw storages."""
    with open(path, "rb") as f:
        # The three header pickles hold only ints and a dict of ints/bools: no globals at all.
        if _load_plain(f, path) != _LEGACY_MAGIC:
            raise ValueError(f"{path}: not a torch checkpoint (bad magic number; expected zip or legacy torch format)")
        protocol = _load_plain(f, path)
        if protocol != 1001:
            raise ValueError(f"{path}: unsupported legacy torch protocol version {protocol} (expected 1001)")
        sys_info = _load_plain(f, path)
        if not sys_info.get("little_endian", True):
            raise ValueError(f"{path}: big-endian legacy checkpoints are not supported")
        storages = {}

        def persistent_load(pid):
            kind = _as_str(pid[0])
            if kind != "storage":
                raise pickle.UnpicklingError(f"{path}: unsupported persistent id {kind!r} (only tensors)")
            storage_type, root_key, _location, numel, view_metadata = pid[1:6]
            root_key = _as_str(root_key)
            if root_key not in storages:
                if not isinstance(storage_type, _StorageType):
                    raise pickle.UnpicklingError(f"{path}: storage {root_key} has unsupported type {storage_type!r}")
                storages[root_key] = _Storage(storage_type.dtype, numel)
            if view_metadata is not None:
                view_key, offset, view_size = view_metadata
                return _Storage(storages[root_key].dtype, view_size, root=storages[root_key], offset=offset)
            return storages[root_key]

        result = _RestrictedUnpickler(f, persistent_load, path).load()
        keys = _load_plain(f, path)
        for key in keys:
            key = _as_str(key)
            if key not in storages:
                raise ValueError(f"{path}: storage key {key} listed but never referenced")
            storage = storages[key]
            (numel,) = struct.unpack("<q", f.read(8))
            nbytes = numel * storage.dtype.itemsize
            raw = f.read(nbytes)
            if len(raw) != nbytes:
                raise ValueError(f"{path}: truncated file while reading storage {key} ({len(raw)} of {nbytes} bytes)")
            storage.data = np.frombuffer(raw, dtype=storage.dtype).copy()
            storage.numel = numel
    return _materialize(result)


def load_torch_file(path) -> Any:
    """Unpickles a torch checkpoint (zip or legacy format) with tensors as numpy arrays."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if zipfile.is_zipfile(path):
        return _load_zip(path)
    return _load_legacy(path)


def _extract_state_dict(obj, source) -> "collections.OrderedDict[str, np.ndarray]":
    """The tensor mapping inside a checkpoint object ('state_dict' or 'model' entry if present), 'module.' stripped."""
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        raise ValueError(f"{source}: expected a state_dict (a mapping of names to tensors), got {type(obj).__name__}")
    out = collections.OrderedDict()
    for name, value in obj.items():
        if not isinstance(value, np.ndarray):
            raise ValueError(f"{source}: entry {name!r} is a {type(value).__name__}, not a tensor")
        while name.startswith("module."):  # DataParallel wrappers
            name = name[len("module."):]
        out[name] = value
    return out


def load_torch_state_dict(path) -> "collections.OrderedDict[str, np.ndarray]":
    """name -> numpy array from a `.pth`/`.pth.tar` (zip or legacy torch format) or an `.npz` of torch names.

    For `.npz`, only keys containing '.' are state_dict entries (torch names always have one; other arrays in
    the file, such as test inputs, are skipped).
    """
    path = os.fspath(path)
    if path.endswith(".npz"):
        with np.load(path) as data:
            return _extract_state_dict({k: data[k] for k in data.files if "." in k}, path)
    return _extract_state_dict(load_torch_file(path), path)


# ----------------------------------------------------------------------------------------------------------------
# Inferring the architecture from names.

_RESNET_KEY = re.compile(r"^layer(\d)\.(\d+)\.(conv\d|bn\d|downsample)\.")
_WEAKALIGN_MODULES = {0: "conv1", 1: "bn1", 4: "layer1", 5: "layer2", 6: "layer3", 7: "layer4"}
_WEAKALIGN_PREFIX = "FeatureExtraction.model."


def _weakalign_encoder_to_torchvision(state_dict) -> dict:
    """FeatureExtraction.model.<i>.* -> torchvision names (i: 0 conv1, 1 bn1, 4..7 layer1..layer4)."""
    out = {}
    for name, value in state_dict.items():
        if name.startswith(_WEAKALIGN_PREFIX):
            index, _, rest = name[len(_WEAKALIGN_PREFIX):].partition(".")
            if index.isdigit() and int(index) in _WEAKALIGN_MODULES:
                out[f"{_WEAKALIGN_MODULES[int(index)]}.{rest}"] = value
    return out


def infer_resnet_config(state_dict: Mapping[str, Any]) -> tuple[int, str, int]:
    """(depth, last_layer, width) of a torchvision-named (or weakalign FeatureExtraction) ResNet state_dict.

    Depth comes from the block kind (conv3 present = Bottleneck) and the block counts of the present layers.
    A truncated net may fit several depths (ResNet-50/101/152 share layer1): their kept layers are identical,
    so the answer is then the paper's ResNet-101 if it fits, else the smallest that fits.
    """
    names = dict(state_dict)
    if not any(n.startswith(("conv1.", "layer")) for n in names):
        names = _weakalign_encoder_to_torchvision(state_dict)
    if "conv1.weight" not in names:
        raise ValueError("cannot infer the ResNet: no 'conv1.weight' (or 'FeatureExtraction.model.0.weight') "
                         f"among the keys; first keys: {list(state_dict)[:5]}")
    conv1 = np.shape(names["conv1.weight"])
    if tuple(conv1[1:]) != (3, 7, 7):
        raise ValueError(f"conv1.weight has shape {tuple(conv1)}; a ResNet stem is (width, 3, 7, 7) "
                         "(VGG feature extractors are not supported)")
    width = int(conv1[0])
    blocks, bottleneck = {}, False
    for name in names:
        match = _RESNET_KEY.match(name)
        if match:
            level, index = int(match.group(1)), int(match.group(2))
            blocks[level] = max(blocks.get(level, 0), index + 1)
            bottleneck |= match.group(3) == "conv3"
    levels = sorted(blocks)
    if levels != list(range(1, len(levels) + 1)):
        raise ValueError(f"ResNet layers present are {levels}; expected layer1..layerN without gaps")
    last_layer = resnet_lib.LAYER_NAMES[len(levels)]
    candidates = [
        depth for depth, (kind, counts) in resnet_lib.RESNET_CONFIGS.items()
        if (kind == "bottleneck") == bottleneck and all(counts[l - 1] == blocks[l] for l in levels)
    ]
    if not candidates:
        raise ValueError(f"no ResNet depth has {'Bottleneck' if bottleneck else 'BasicBlock'} blocks "
                         f"{[blocks[l] for l in levels]} in layers {levels}")
    depth = 101 if 101 in candidates else min(candidates)
    return depth, last_layer, width


def _regression_heads(state_dict) -> dict:
    """{'affine_regression' | 'tps_regression': torch prefix}, told apart by the Linear's output size."""
    heads = {}
    for prefix in sorted({n.split(".")[0] for n in state_dict if n.startswith("FeatureRegression")}):
        linear = state_dict.get(f"{prefix}.linear.weight")
        if linear is None:
            raise ValueError(f"{prefix}: missing '{prefix}.linear.weight'")
        dim = int(np.shape(linear)[0])
        if dim not in (6, 18):
            raise ValueError(f"{prefix}.linear.weight has output size {dim}; expected 6 (affine) or 18 (TPS)")
        target = "affine_regression" if dim == 6 else "tps_regression"
        if target in heads:
            raise ValueError(f"two regression heads with output size {dim}: {heads[target]} and {prefix}")
        heads[target] = prefix
    return heads


def _regression_config(state_dict, prefix) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(channels, kernel_sizes) of a FeatureRegression from its conv.{3j}.weight shapes."""
    channels, kernels, j = [], [], 0
    while f"{prefix}.conv.{3 * j}.weight" in state_dict:
        shape = np.shape(state_dict[f"{prefix}.conv.{3 * j}.weight"])
        channels.append(int(shape[0]))
        kernels.append(int(shape[2]))
        j += 1
    if not channels:
        raise ValueError(f"{prefix}: no '{prefix}.conv.0.weight'")
    return tuple(channels), tuple(kernels)


def matching_model_from_state_dict(state_dict, layout: str = "weakalign", image_size: int = 240,
                                   **overrides) -> MatchingModel:
    """The MatchingModel whose variables a weakalign/CNNGeo state_dict fills (config inferred from the names)."""
    depth, last_layer, width = infer_resnet_config(state_dict)
    heads = _regression_heads(state_dict)
    if not heads:
        raise ValueError(f"{layout} checkpoint has no FeatureRegression* entries")
    channels, kernels = _regression_config(state_dict, next(iter(heads.values())))
    return MatchingModel(depth=depth, last_layer=last_layer, width=width, image_size=image_size,
                         regression_channels=channels, regression_kernels=kernels, **overrides)


# ----------------------------------------------------------------------------------------------------------------
# Flax variable -> torch name (one direction: the model enumerates what it needs).

_ENCODER = backbones.RESNET  # weakalign/CNNGeo/torchvision checkpoints hold torchvision ResNets
_LEAF_TO_TORCH = {("params", "kernel"): "weight", ("params", "scale"): "weight", ("params", "bias"): "bias",
                  ("batch_stats", "mean"): "running_mean", ("batch_stats", "var"): "running_var"}


def _regression_module_name(part) -> str:
    """conv{j} -> conv.{3j}, bn{j} -> conv.{3j+1}, linear -> linear (torch's Sequential indices)."""
    match = re.fullmatch(r"(conv|bn)(\d+)", part)
    if match:
        j = int(match.group(2))
        return f"conv.{3 * j + (match.group(1) == 'bn')}"
    return part


def _torch_conv_to_flax(weight):
    return np.transpose(weight, (2, 3, 1, 0))  # OIHW -> HWIO


def _torch_flatten_linear_to_flax(weight, channels):
    """Linear (D, C·H·W) fed by torch's (C, H, W) flatten -> Dense kernel (H·W·C, D) for an NHWC flatten."""
    out_dim, in_dim = weight.shape
    spatial = in_dim // channels
    side = int(round(spatial ** 0.5))
    if channels * side * side != in_dim:
        raise ValueError(f"Linear input {in_dim} is not {channels} channels on a square grid")
    return weight.reshape(out_dim, channels, side, side).transpose(2, 3, 1, 0).reshape(in_dim, out_dim)


class WeightsMismatchError(ValueError):
    """Torch weights that do not fit the configured model: names missing / unexpected, tensors of other shapes.

    misshaped: [(torch name, shape it converts to, shape the model expects, flax path), ...].
    """

    def __init__(self, missing, unexpected, misshaped):
        self.missing, self.unexpected, self.misshaped = list(missing), list(unexpected), list(misshaped)
        shaped = [f"{n}: torch gives {got}, model expects {want} ({path})" for n, got, want, path in misshaped]
        super().__init__("checkpoint does not match the model:\n"
                         f"  missing ({len(missing)}): {self.missing}\n"
                         f"  unexpected ({len(unexpected)}): {self.unexpected}\n"
                         f"  mis-shaped ({len(misshaped)}): {shaped}")

    def correlation_channels(self) -> tuple[int, int] | None:
        """(checkpoint, model) input channels of the first regression conv when they differ, else None.

        Those channels are the correlation's h*w feature cells, so they differ when the input size does.
        """
        for _, got, want, path in self.misshaped:
            if "regression" in path and "conv0" in path and len(got) == 4 and got[:2] == want[:2]:
                return int(got[2]), int(want[2])
        return None


def _convert(abstract, torch_name_of, state_dict, transform_of, dropped=()) -> dict:
    """Fills every leaf of `abstract` (flax variables of ShapeDtypeStructs) from state_dict; strict.

    torch_name_of(path) -> torch name or None (None: leave the leaf to a default filler, see caller);
    transform_of(path, array) -> array in Flax layout. Names matching a prefix in `dropped` may stay unused.
    """
    flat = flax.traverse_util.flatten_dict(abstract)
    out, missing, misshaped, used = {}, [], [], set()
    for path, leaf in flat.items():
        name = torch_name_of(path)
        if name is None:
            continue
        if name not in state_dict:
            missing.append(name)
            continue
        used.add(name)
        value = transform_of(path, np.asarray(state_dict[name]))
        if value.shape != tuple(leaf.shape):
            misshaped.append((name, tuple(value.shape), tuple(leaf.shape), "/".join(path)))
            continue
        out[path] = jnp.asarray(value, leaf.dtype)
    unexpected = [n for n in state_dict if n not in used and not n.endswith(".num_batches_tracked")
                  and not n.startswith(tuple(dropped))]
    if missing or unexpected or misshaped:
        raise WeightsMismatchError(missing, unexpected, misshaped)
    return out


def _leaf_transform(regression_channels):
    def transform(path, array):
        if path[-1] == "kernel":
            if array.ndim == 4:
                return _torch_conv_to_flax(array)
            if array.ndim == 2:
                if "linear" in path and regression_channels:
                    return _torch_flatten_linear_to_flax(array, regression_channels)
                return array.T
        return array
    return transform


def _identity_head(abstract_head: dict, output_dim: int) -> dict:
    """Variables of a FeatureRegression that outputs the identity θ for any input (zero Dense kernel)."""
    def fill(path, leaf):
        if path[-1] == "bias" and path[-2] == "linear":
            return jnp.asarray(identity_theta(output_dim), leaf.dtype)
        if path[-1] in ("scale", "var"):
            return jnp.ones(leaf.shape, leaf.dtype)
        return jnp.zeros(leaf.shape, leaf.dtype)
    flat = flax.traverse_util.flatten_dict(abstract_head)
    return {path: fill(path, leaf) for path, leaf in flat.items()}


def _abstract_variables(model, *inputs):
    return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *inputs, train=False))


def convert_torch_checkpoint(path_or_mapping, layout: str, image_size: int = 240, last_layer: str | None = None,
                             **model_overrides):
    """(model, variables) from a torch checkpoint; see `load_torch_checkpoint`."""
    if isinstance(path_or_mapping, Mapping):
        state_dict = _extract_state_dict(path_or_mapping, "state_dict mapping")
    else:
        state_dict = load_torch_state_dict(path_or_mapping)

    if layout == "torchvision_resnet":
        depth, inferred_last, width = infer_resnet_config(state_dict)
        last = last_layer or inferred_last
        if resnet_lib.LAYER_NAMES.index(last) > resnet_lib.LAYER_NAMES.index(inferred_last):
            raise ValueError(f"last_layer={last!r} but the checkpoint only holds up to {inferred_last!r}")
        dropped = ["fc."] + [f"{n}." for n in resnet_lib.LAYER_NAMES[resnet_lib.LAYER_NAMES.index(last) + 1:]]
        model = resnet_lib.ResNet(depth=depth, last_layer=last, width=width, **model_overrides)
        abstract = _abstract_variables(model, jnp.zeros((1, 64, 64, 3)))

        def name_of(path):
            return f"{_ENCODER.torch_module_name(path[1:-1])}.{_LEAF_TO_TORCH[(path[0], path[-1])]}"

        flat = _convert(abstract, name_of, state_dict, _leaf_transform(None), dropped)
        return model, flax.traverse_util.unflatten_dict(flat)

    if layout not in ("weakalign", "cnngeo"):
        raise ValueError(f"unknown checkpoint layout {layout!r}; expected 'weakalign', 'cnngeo' or "
                         "'torchvision_resnet'")
    if last_layer is not None:
        raise ValueError("last_layer applies to layout='torchvision_resnet' only")
    heads = _regression_heads(state_dict)
    if layout == "weakalign" and set(heads) != {"affine_regression", "tps_regression"}:
        raise ValueError(f"weakalign checkpoint must hold an affine (6) and a TPS (18) FeatureRegression; "
                         f"found {heads or 'none'}")
    model = matching_model_from_state_dict(state_dict, layout, image_size, **model_overrides)
    images = jnp.zeros((1, image_size, image_size, 3))
    abstract = _abstract_variables(model, images, images)
    channels = model.regression_channels[-1]

    def name_of(path):
        collection, module, *inner, leaf = path
        if module == "encoder":
            tv_name = _ENCODER.torch_module_name(inner)
            top = tv_name.split(".")[0]
            index = {v: k for k, v in _WEAKALIGN_MODULES.items()}[top]
            torch_module = f"{_WEAKALIGN_PREFIX}{index}{tv_name[len(top):]}"
        else:
            if module not in heads:
                return None  # a head the (single-stage CNNGeo) checkpoint lacks: filled with the identity below
            torch_module = f"{heads[module]}.{_regression_module_name(inner[0])}"
        return f"{torch_module}.{_LEAF_TO_TORCH[(collection, leaf)]}"

    flat = _convert(abstract, name_of, state_dict, _leaf_transform(channels))
    for head, dim in (("affine_regression", 6), ("tps_regression", 18)):
        if head not in heads:
            sub = {c: abstract[c][head] for c in abstract}
            flat.update({(p[0], head) + p[1:]: v for p, v in _identity_head(sub, dim).items()})
    return model, flax.traverse_util.unflatten_dict(flat)


def load_torch_checkpoint(path_or_mapping, layout: str, image_size: int = 240, last_layer: str | None = None):
    """Flax variables {'params', 'batch_stats'} from a torch checkpoint file or a name -> array mapping.

    layout:
      'weakalign' / 'cnngeo': `FeatureExtraction.model.<i>.*` -> encoder, `FeatureRegression(2)?.*` ->
        affine_regression / tps_regression (told apart by output size 6 / 18), for
        `MatchingModel(**config inferred from the names, image_size=image_size)` (use
        `convert_torch_checkpoint` to get that model too). A single-stage CNNGeo checkpoint holds one head; the
        other is filled with an identity head (zero Dense kernel, identity bias), so the cascade reduces to
        the single-stage model.
      'torchvision_resnet': conv1/bn1/layerN.* -> `ResNet` variables; `fc.*` and layers after `last_layer`
        (default: the last one present) are dropped.
    Raises ValueError listing missing, unexpected and mis-shaped names when the checkpoint and model disagree.
    """
    return convert_torch_checkpoint(path_or_mapping, layout, image_size, last_layer)[1]


def load_dinov2(path_or_mapping, **overrides):
    """(DinoV2 model, variables) from an official DINOv2 `.pth` or a name -> array mapping
    (`macosnet_jax.dinov2_weights.load_dinov2`)."""
    from macosnet_jax import dinov2_weights
    return dinov2_weights.load_dinov2(path_or_mapping, **overrides)
