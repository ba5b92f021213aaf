"""Read a PyTorch ``state_dict`` checkpoint into numpy arrays without importing torch.

The pretrained EfficientNet-Lite0 weights ship as a ``.pth`` file; depending on torch
the serving image would weigh gigabytes, so the two on-disk formats are parsed here:

* legacy (torch < 1.6): pickled magic number, protocol version, sys_info, then the state
  dict pickled with persistent ids ``('storage', StorageType, key, device, numel, view)``,
  then the pickled list of storage keys, then per key an int64 element count and the raw
  little-endian bytes;
* zip (torch >= 1.6): ``<name>/data.pkl`` with persistent ids
  ``('storage', StorageType, key, device, numel)`` and the bytes in ``<name>/data/<key>``.

Only what a state dict needs is allowed through the unpickler (tensors, OrderedDict);
any other global raises, so a checkpoint cannot run code while loading.
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
        if not self.size:
            return flat[self.offset].copy()
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset :],
            shape=tuple(self.size),
            strides=tuple(s * flat.itemsize for s in self.stride),
            writeable=False,
        )
        return np.ascontiguousarray(view)


def _rebuild_tensor(storage: _StorageRef, offset: int, size: tuple, stride: tuple, *_unused) -> _TensorRef:
    return _TensorRef(storage, offset, tuple(size), tuple(stride))


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
        kind, storage_type, key, _device, _numel, *view = pid
        if kind != "storage" or (view and view[0] is not None):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        return _StorageRef(str(key), storage_type.dtype)


def _tensor_refs(state) -> dict[str, _TensorRef]:
    if not isinstance(state, dict) or not all(isinstance(v, _TensorRef) for v in state.values()):
        raise ValueError("checkpoint is not a flat state dict of tensors")
    return dict(state)


def _load_legacy(f) -> dict[str, np.ndarray]:
    magic, protocol = pickle.load(f), pickle.load(f)
    if magic != LEGACY_MAGIC or protocol != 1001:
        raise ValueError("not a PyTorch checkpoint (bad magic number or protocol)")
    if not pickle.load(f).get("little_endian", True):  # sys_info
        raise ValueError("big-endian checkpoints are not supported")
    refs = _tensor_refs(_Unpickler(f).load())
    dtypes = {r.storage.key: r.storage.dtype for r in refs.values()}
    storages = {}
    for key in pickle.load(f):  # storage keys, in the order their bytes follow
        (numel,) = struct.unpack("<q", f.read(8))
        nbytes = numel * dtypes[key].itemsize
        raw = f.read(nbytes)
        if len(raw) != nbytes:
            raise ValueError(f"truncated checkpoint at storage {key}")
        storages[key] = np.frombuffer(raw, dtype=dtypes[key])
    return {name: ref.materialize(storages) for name, ref in refs.items()}


def _load_zip(path: str | os.PathLike) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(path) as zf:
        pkl = next(n for n in zf.namelist() if n == "data.pkl" or n.endswith("/data.pkl"))
        prefix = pkl[: -len("data.pkl")]
        refs = _tensor_refs(_Unpickler(io.BytesIO(zf.read(pkl))).load())
        storages = {
            r.storage.key: np.frombuffer(zf.read(f"{prefix}data/{r.storage.key}"), dtype=r.storage.dtype)
            for r in refs.values()
        }
    return {name: ref.materialize(storages) for name, ref in refs.items()}


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """``{parameter name: array}`` from a ``.pth`` file in either PyTorch format."""
    if zipfile.is_zipfile(path):
        return _load_zip(path)
    with open(path, "rb") as f:
        return _load_legacy(f)
