"""Crafted pytorch_model.bin files: the torch-free reader refuses each with one error naming the file and
the tensor, reads nothing outside a storage and never allocates beyond what the archive declares."""

import contextlib
import pickle
import sys
import types
import zipfile

import numpy as np
import pytest

from samtone_tf.model.torch_checkpoint import read_pytorch_state_dict
from tests.helpers import REPOSITORY_ROOT

TINY_BERT = REPOSITORY_ROOT / "tests" / "fixtures" / "tiny-bert" / "pytorch_model.bin"


@contextlib.contextmanager
def _fake_torch():
    """Stand-ins named as torch's, so pickle writes the globals torch.save writes (torch is not installed)."""
    saved = {name: sys.modules.get(name) for name in ("torch", "torch._utils")}
    torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called while writing")

    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2, torch._utils = _rebuild_tensor_v2, utils
    for name in ("FloatStorage", "DoubleStorage"):
        storage_type = type(name, (), {"__module__": "torch"})
        storage_type.__qualname__ = name
        setattr(torch, name, storage_type)
    sys.modules.update({"torch": torch, "torch._utils": utils})
    try:
        yield torch, utils
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


class _Tensor:
    def __init__(self, key, numel, offset, size, stride, storage_type="FloatStorage"):
        self.key, self.numel, self.offset, self.size, self.stride = key, numel, offset, size, stride
        self.storage_type = storage_type


def write_checkpoint(path, tensors, storages, compress=False):
    """tensors: {name: _Tensor}; storages: {key: bytes}."""
    with _fake_torch() as (torch, utils):
        class Pickler(pickle.Pickler):
            def persistent_id(self, obj):
                if isinstance(obj, tuple) and obj and obj[0] == "storage-ref":
                    return ("storage", getattr(torch, obj[3]), obj[1], "cpu", obj[2])
                return None

        class Reduced:
            def __init__(self, tensor):
                self.tensor = tensor

            def __reduce__(self):
                t = self.tensor
                return (utils._rebuild_tensor_v2, (("storage-ref", t.key, t.numel, t.storage_type), t.offset, t.size, t.stride,
                                                   False, None))

        import io

        buffer = io.BytesIO()
        Pickler(buffer, protocol=2).dump({name: Reduced(t) for name, t in tensors.items()})
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", compression=method) as archive:
        archive.writestr("archive/data.pkl", buffer.getvalue())
        for key, data in storages.items():
            archive.writestr(f"archive/data/{key}", data)
    return path


def floats(n):
    return np.arange(n, dtype=np.float32).tobytes()


def test_a_well_formed_crafted_file_reads_back(tmp_path):
    path = write_checkpoint(tmp_path / "ok.bin", {
        "a": _Tensor("0", 6, 0, (2, 3), (3, 1)),
        "a_transposed": _Tensor("0", 6, 0, (3, 2), (1, 3)),
        "tail": _Tensor("1", 6, 4, (2,), (1,)),
    }, {"0": floats(6), "1": floats(6)})
    weights = read_pytorch_state_dict(path)
    np.testing.assert_array_equal(weights["a"], np.arange(6, dtype=np.float32).reshape(2, 3))
    np.testing.assert_array_equal(weights["a_transposed"], weights["a"].T)
    np.testing.assert_array_equal(weights["tail"], [4, 5])


def test_the_real_fixture_still_reads():
    weights = read_pytorch_state_dict(TINY_BERT)
    assert weights and all(np.isfinite(w).all() for w in weights.values() if w.dtype.kind == "f")


@pytest.mark.parametrize("case,tensors,storages,message", [
    ("view past the storage (heap bytes in the weights)", {"gamma": _Tensor("0", 64, 0, (64,), (1,))},
     {"0": floats(4)}, "holds 16 bytes, the pickle declares 64 elements"),
    ("numel declared honestly, view reaching past it", {"gamma": _Tensor("0", 4, 0, (64,), (1,))},
     {"0": floats(4)}, "reaches element 63 of a storage of 4"),
    ("huge offset", {"w": _Tensor("0", 4, 2**40, (2,), (1,))}, {"0": floats(4)}, "reaches element"),
    ("huge stride", {"w": _Tensor("0", 4, 0, (2, 2), (2**45, 1))}, {"0": floats(4)}, "reaches element"),
    ("negative stride", {"w": _Tensor("0", 4, 3, (2,), (-1,))}, {"0": floats(4)}, "negative offset, size or stride"),
    ("negative offset", {"w": _Tensor("0", 4, -2, (2,), (1,))}, {"0": floats(4)}, "negative offset, size or stride"),
    ("stride 0 blown up to 1 GiB", {"w": _Tensor("0", 1, 0, (2**14, 2**14), (0, 0))}, {"0": floats(1)},
     "more than 2x the 4 bytes of the storages"),
    ("one storage viewed 64 times", {f"w{i}": _Tensor("0", 1024, 0, (1024,), (1,)) for i in range(64)},
     {"0": floats(1024)}, "more than 2x the 4096 bytes"),
    ("one storage key declared with two sizes (the second read through the first's bytes)",
     {"small": _Tensor("0", 4, 0, (4,), (1,)), "weight": _Tensor("0", 4096, 0, (4096,), (1,))}, {"0": floats(4)},
     "storage '0' is declared twice, as 4 elements of float32 and as 4096"),
    ("the larger declaration first", {"weight": _Tensor("0", 4096, 0, (4096,), (1,)),
                                      "small": _Tensor("0", 4, 0, (4,), (1,))}, {"0": floats(4)},
     "storage '0' is declared twice"),
    ("one storage key declared with two types", {"a": _Tensor("0", 4, 0, (4,), (1,)),
                                                 "b": _Tensor("0", 4, 0, (4,), (1,), "DoubleStorage")},
     {"0": floats(4)}, "declared twice, as 4 elements of float32 and as 4 of float64"),
    ("missing storage", {"w": _Tensor("7", 4, 0, (4,), (1,))}, {"0": floats(4)}, "storage archive/data/7 is missing"),
])
def test_crafted_views_are_refused_naming_file_and_tensor(tmp_path, case, tensors, storages, message):
    path = write_checkpoint(tmp_path / "crafted.bin", tensors, storages)
    with pytest.raises(ValueError, match=message) as error:
        read_pytorch_state_dict(path)
    assert str(path) in str(error.value) and "tensor '" in str(error.value), case


def test_a_zip_bomb_is_refused_before_it_inflates(tmp_path):
    numel = 64 * 2**20  # 256 MiB of zeros, a few hundred KiB compressed
    path = write_checkpoint(tmp_path / "bomb.bin", {"w": _Tensor("0", numel, 0, (numel,), (1,))},
                            {"0": bytes(numel * 4)}, compress=True)
    assert path.stat().st_size < 2**20
    with pytest.raises(ValueError, match="zip bomb"):
        read_pytorch_state_dict(path)
