"""Reading a `torch.save` checkpoint (`pytorch_model.bin`, zip format) into NumPy arrays without PyTorch,
safely: no code from the file runs, no view reads outside its storage, and the memory it can make us use
is bounded by what the archive declares.

What is refused, with one ValueError naming the file (and the tensor, where there is one):
  - any class in the pickle but tensors, parameters, storages and ordered dicts (code would run);
  - a storage whose bytes differ from the element count the pickle declares for it;
  - one storage key declared twice with another element count or type (the first declaration would be checked
    against the file, the second one read through it);
  - a compressed storage inflating far beyond its compressed size (PyTorch stores them uncompressed);
  - a view with a negative offset, size or stride, or reaching past the end of its storage;
  - views adding up to more than twice the bytes of the storages they view (a 4-byte storage with
    stride 0 declared as a 1 GiB tensor; one storage viewed 64 times).
"""

from __future__ import annotations

import collections
import math
import pickle
import zipfile
from pathlib import Path

import ml_dtypes
import numpy as np

STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
# PyTorch writes storages uncompressed; a compressed entry may inflate at most this much.
MAX_INFLATION = 20
MAX_PICKLE_BYTES = 64 * 2**20
# Views may add up to this many times the bytes of the storages (tied weights view one storage twice).
MAX_VIEW_FACTOR = 2


def read_pytorch_state_dict(path):
    """{name: np.ndarray} of a `torch.save` zip checkpoint (PyTorch >= 1.6), without PyTorch.

    Raises ValueError (pickle.UnpicklingError for a class it refuses) naming the file and the tensor.
    """
    path = Path(path)
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: not a zip-format PyTorch checkpoint (saved by PyTorch < 1.6?); "
                         "convert it to model.safetensors")
    with zipfile.ZipFile(path) as archive:
        pickles = [name for name in archive.namelist() if name.endswith("data.pkl")]
        if len(pickles) != 1:
            raise ValueError(f"{path}: expected one data.pkl in the archive, found {len(pickles)}")
        prefix = pickles[0][: -len("data.pkl")]
        if archive.getinfo(pickles[0]).file_size > MAX_PICKLE_BYTES:
            raise ValueError(f"{path}: data.pkl declares {archive.getinfo(pickles[0]).file_size} bytes; a state "
                             f"dict's pickle is far smaller (limit {MAX_PICKLE_BYTES})")
        with archive.open(pickles[0]) as f:
            state = _Unpickler(f, path).load()
        if not isinstance(state, dict):
            raise ValueError(f"{path}: the checkpoint holds a {type(state).__name__}, not a state dict")
        views = {name: value for name, value in state.items() if isinstance(value, _View)}
        storages = _declared_storages(views, path)
        budget = MAX_VIEW_FACTOR * sum(s.numel * s.itemsize for s in storages.values())
        loaded, materialised, weights = {}, 0, {}
        for name, view in views.items():
            view.check(path, name)
            materialised += view.numel * view.storage.itemsize
            if materialised > budget:
                raise ValueError(f"{path}: tensor {name!r} brings the tensors to {materialised} bytes, more than "
                                 f"{MAX_VIEW_FACTOR}x the {budget // MAX_VIEW_FACTOR} bytes of the storages they "
                                 "view (a crafted or damaged checkpoint)")
            if view.storage.key not in loaded:
                loaded[view.storage.key] = _read_storage(archive, prefix, view.storage, path, name)
            weights[name] = view.materialise(loaded[view.storage.key])
    return weights


def _declared_storages(views, path):
    """{storage key: _Storage} of `views`, every key declared alike wherever it appears: one key declared with two
    element counts or two types would have its first declaration checked against the archive's bytes and its
    second read through them."""
    storages = {}
    for name, view in views.items():
        storage = view.storage
        if not isinstance(storage, _Storage):
            continue  # `_View.check` names it
        first = storages.setdefault(storage.key, storage)
        if (first.numel, first.dtype) != (storage.numel, storage.dtype):
            raise ValueError(f"{path}: tensor {name!r}: storage {storage.key!r} is declared twice, as {first.numel} "
                             f"elements of {first.dtype} and as {storage.numel} of {storage.dtype} "
                             "(a crafted or damaged checkpoint)")
    return storages


class _Storage:
    def __init__(self, key, dtype, numel):
        self.key, self.dtype, self.numel = key, np.dtype(dtype), numel
        self.itemsize = self.dtype.itemsize


class _View:
    """A tensor as the pickle declares it: a strided view of a storage, checked before it is made."""

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    @property
    def numel(self):
        return math.prod(self.size)

    def check(self, path, name):
        where = f"{path}: tensor {name!r}"
        if not isinstance(self.storage, _Storage):
            raise ValueError(f"{where}: its storage is not a storage")
        if not (isinstance(self.offset, int) and all(isinstance(x, int) for x in (*self.size, *self.stride))):
            raise ValueError(f"{where}: offset, size and stride must be integers")
        if len(self.size) != len(self.stride):
            raise ValueError(f"{where}: {len(self.size)} sizes but {len(self.stride)} strides")
        if self.offset < 0 or any(x < 0 for x in self.size) or any(x < 0 for x in self.stride):
            raise ValueError(f"{where}: negative offset, size or stride ({self.offset}, {self.size}, {self.stride})")
        if self.numel == 0:
            return
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
        if last >= self.storage.numel:
            raise ValueError(f"{where}: the view (offset {self.offset}, size {list(self.size)}, stride "
                             f"{list(self.stride)}) reaches element {last} of a storage of {self.storage.numel}")

    def materialise(self, data):
        if self.numel == 0:
            return np.zeros(self.size, self.storage.dtype)
        itemsize = self.storage.itemsize
        if len(data) != self.storage.numel:  # never read through another declaration's buffer
            raise ValueError(f"a storage of {len(data)} elements materialised as one of {self.storage.numel}")
        view = np.lib.stride_tricks.as_strided(data[self.offset:], shape=tuple(self.size),
                                               strides=tuple(s * itemsize for s in self.stride), writeable=False)
        return np.array(view)


def _read_storage(archive, prefix, storage, path, name):
    entry = f"{prefix}data/{storage.key}"
    try:
        info = archive.getinfo(entry)
    except KeyError:
        raise ValueError(f"{path}: tensor {name!r}: its storage {entry} is missing from the archive") from None
    declared = storage.numel * storage.itemsize
    if info.file_size != declared:
        raise ValueError(f"{path}: tensor {name!r}: storage {entry} holds {info.file_size} bytes, the pickle "
                         f"declares {storage.numel} elements of {storage.itemsize} bytes ({declared})")
    if info.compress_type != zipfile.ZIP_STORED and info.file_size > MAX_INFLATION * max(info.compress_size, 1):
        raise ValueError(f"{path}: tensor {name!r}: storage {entry} inflates from {info.compress_size} to "
                         f"{info.file_size} bytes (a zip bomb? PyTorch stores storages uncompressed)")
    data = archive.read(entry)
    if len(data) != declared:
        raise ValueError(f"{path}: tensor {name!r}: storage {entry} is truncated ({len(data)} of {declared} bytes)")
    return np.frombuffer(data, dtype=storage.dtype)


def _rebuild_tensor(storage, offset, size, stride, *unused):
    return _View(storage, offset, tuple(size), tuple(stride))


def _rebuild_parameter(data, *unused):
    return data


class _StorageType:
    def __init__(self, name):
        self.dtype = STORAGE_DTYPES[name]


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, path):
        super().__init__(file)
        self._path = path

    def find_class(self, module, name):
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        raise pickle.UnpicklingError(f"{self._path}: refusing to load {module}.{name}")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[4], int) and pid[4] >= 0):
            raise pickle.UnpicklingError(f"{self._path}: unknown persistent id {pid!r:.200}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(key, str) or "/" in key or ".." in key:
            raise pickle.UnpicklingError(f"{self._path}: bad storage key {key!r:.100}")
        return _Storage(key, storage_type.dtype, numel)
