"""Reading PyTorch checkpoint files without torch: name -> numpy array.

Formats: torch's zip format (torch >= 1.6), torch's legacy format (the pickled stream of weakalign's and CNNGeo's
released `.pth.tar` files) and `.npz` files keyed by torch names. Pickles are read by a restricted Unpickler that
only rebuilds tensors from storages (plus OrderedDict, argparse.Namespace and numpy scalars, which training scripts
store beside the weights) and refuses every other global: a checkpoint is data, and unpickling arbitrary globals
would execute arbitrary code.
"""
from __future__ import annotations

import argparse
import collections
import io
import os
import pickle
import struct
import zipfile
from typing import Any, Mapping

import ml_dtypes
import numpy as np

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


def extract_state_dict(obj, source) -> "collections.OrderedDict[str, np.ndarray]":
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
            return extract_state_dict({k: data[k] for k in data.files if "." in k}, path)
    return extract_state_dict(load_torch_file(path), path)
