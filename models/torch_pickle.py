"""Read a PyTorch ``state_dict`` checkpoint into numpy arrays without importing torch.

The pretrained EfficientNet-Lite0 weights ship as a ``.pth`` file; depending on torch
the serving image would weigh gigabytes, so the two on-disk formats are parsed here:

* legacy (torch < 1.6): pickled magic number, protocol version, sys_info, then the state
  dict pickled with persistent ids ``('storage', StorageType, key, device, numel, view)``,
  then the pickled list of storage keys, then per key an int64 element count and the raw
  little-endian bytes;
* zip (torch >= 1.6): ``<name>/data.pkl`` with persistent ids
  ``('storage', StorageType, key, device, numel)`` and the bytes in ``<name>/data/<key>``.

Every pickle in the file (magic number, protocol, sys_info, the state dict, the storage keys)
goes through a restricted unpickler: the small header pickles may hold only plain data (no
globals, no persistent ids), the state dict only what a state dict needs (tensors, OrderedDict).
Any other global raises before it is looked up, so loading a checkpoint cannot run code. Every
tensor view is bounds-checked against its storage before ``as_strided`` touches memory, and
storage sizes against the bytes actually present, so a crafted file cannot read past a buffer
or make us allocate what it does not contain.
"""
from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from dataclasses import dataclass

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

_STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:
    def __init__(self, name: str):
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


@dataclass(frozen=True)
class _StorageRef:
    key: str
    dtype: np.dtype


@dataclass(frozen=True)
class _TensorRef:
    """A tensor as pickled: a strided view into a storage whose bytes may come later (legacy)."""

    storage: _StorageRef
    offset: int
    size: tuple
    stride: tuple

    def materialize(self, storages: dict[str, np.ndarray]) -> np.ndarray:
        flat = storages[self.storage.key]
        if flat.dtype != self.storage.dtype:
            raise ValueError(f"storage {self.storage.key} is used with two dtypes")
        check_view(len(flat), self.offset, self.size, self.stride)
        if not self.size:
            return flat[self.offset].copy()
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset :],
            shape=tuple(self.size),
            strides=tuple(s * flat.itemsize for s in self.stride),
            writeable=False,
        )
        return np.ascontiguousarray(view)


def check_view(numel: int, offset, size, stride) -> None:
    """Raise unless every element of the strided view lies inside a storage of ``numel`` elements.

    ``as_strided`` trusts its arguments: a pickled size or stride one too large reads (and copies
    into the weights) whatever memory follows the buffer.
    """
    ints = (offset, *size, *stride)
    if not all(type(v) is int for v in ints) or len(size) != len(stride):
        raise ValueError("tensor view: offset, size and stride must be integers of matching rank")
    if offset < 0 or any(v < 0 for v in (*size, *stride)):
        raise ValueError("tensor view: negative offset, size or stride")
    if 0 in size:
        return
    last = offset + sum((n - 1) * st for n, st in zip(size, stride))
    if last >= numel:
        raise ValueError(f"tensor view reaches element {last} of a storage of {numel}")


def _rebuild_tensor(storage: _StorageRef, offset: int, size: tuple, stride: tuple, *_unused) -> _TensorRef:
    if not isinstance(storage, _StorageRef) or not isinstance(size, tuple) or not isinstance(stride, tuple):
        raise pickle.UnpicklingError("malformed tensor in checkpoint")
    return _TensorRef(storage, offset, tuple(size), tuple(stride))


class _DataUnpickler(pickle.Unpickler):
    """For the header pickles: plain data only (ints, strings, dicts, lists); every global raises."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a checkpoint")

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("unexpected persistent id in a checkpoint header")


def _load_data(f, expected: type):
    value = _DataUnpickler(f).load()
    if type(value) is not expected:
        raise ValueError(f"not a PyTorch checkpoint (header field is {type(value).__name__})")
    return value


class _Unpickler(pickle.Unpickler):
    """Allows only what a state dict needs; any other global raises instead of running code."""

    def find_class(self, module: str, name: str):
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a checkpoint")

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or len(pid) not in (5, 6):
            raise pickle.UnpicklingError("unsupported persistent id")
        kind, storage_type, key, _device, numel, *view = pid
        if kind != "storage" or not isinstance(storage_type, _StorageType) or (view and view[0] is not None):
            raise pickle.UnpicklingError("unsupported persistent id")
        if type(numel) is not int or numel < 0:
            raise pickle.UnpicklingError("bad storage size")
        ref = _StorageRef(str(key), storage_type.dtype)
        self.numels[ref.key] = numel
        return ref

    def __init__(self, f):
        super().__init__(f)
        self.numels: dict[str, int] = {}


def _tensor_refs(state) -> dict[str, _TensorRef]:
    if not isinstance(state, dict) or not all(isinstance(v, _TensorRef) for v in state.values()):
        raise ValueError("checkpoint is not a flat state dict of tensors")
    return dict(state)


def _load_legacy(f) -> dict[str, np.ndarray]:
    magic, protocol = _load_data(f, int), _load_data(f, int)
    if magic != LEGACY_MAGIC or protocol != 1001:
        raise ValueError("not a PyTorch checkpoint (bad magic number or protocol)")
    if not _load_data(f, dict).get("little_endian", True):  # sys_info
        raise ValueError("big-endian checkpoints are not supported")
    refs = _tensor_refs(_Unpickler(f).load())
    dtypes = {r.storage.key: r.storage.dtype for r in refs.values()}
    keys = _load_data(f, list)  # storage keys, in the order their bytes follow
    left = os.fstat(f.fileno()).st_size - f.tell()
    storages = {}
    for key in keys:
        if not isinstance(key, str) or key not in dtypes:
            raise ValueError("checkpoint lists a storage no tensor uses")
        (numel,) = struct.unpack("<q", f.read(8))
        nbytes = numel * dtypes[key].itemsize
        left -= 8
        if numel < 0 or nbytes > left:  # never allocate more than the file holds
            raise ValueError(f"truncated checkpoint at storage {key}")
        raw = f.read(nbytes)
        left -= nbytes
        if len(raw) != nbytes:
            raise ValueError(f"truncated checkpoint at storage {key}")
        storages[key] = np.frombuffer(raw, dtype=dtypes[key])
    if set(storages) != set(dtypes):
        raise ValueError("checkpoint is missing storages")
    return {name: ref.materialize(storages) for name, ref in refs.items()}


def _load_zip(path: str | os.PathLike) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(path) as zf:
        pkl = next(n for n in zf.namelist() if n == "data.pkl" or n.endswith("/data.pkl"))
        prefix = pkl[: -len("data.pkl")]
        unpickler = _Unpickler(io.BytesIO(zf.read(pkl)))
        refs = _tensor_refs(unpickler.load())
        storages = {}
        for r in refs.values():
            if r.storage.key in storages:
                continue
            info = zf.getinfo(f"{prefix}data/{r.storage.key}")
            if info.file_size != unpickler.numels[r.storage.key] * r.storage.dtype.itemsize:
                raise ValueError(f"storage {r.storage.key}: size does not match its element count")
            storages[r.storage.key] = np.frombuffer(zf.read(info), dtype=r.storage.dtype)
    return {name: ref.materialize(storages) for name, ref in refs.items()}


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """``{parameter name: array}`` from a ``.pth`` file in either PyTorch format."""
    if zipfile.is_zipfile(path):
        return _load_zip(path)
    with open(path, "rb") as f:
        return _load_legacy(f)
