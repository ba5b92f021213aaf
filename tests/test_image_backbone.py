"""The converted EfficientNet-Lite0 classifies known images; the image helpers keep their contracts."""

from __future__ import annotations

import collections
import pickle
import struct
import sys
import types
import zipfile

import numpy as np
import pytest
from PIL import Image
from skimage import data

from models.efficientnet_lite import checkpoint_path, efficientnet_lite0, load_imagenet_weights
from models.image import build_image_classifier, export_weights_float16, load_weights_float16, prepare_image
from models.torch_pickle import LEGACY_MAGIC, load_state_dict

CATS = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE = {504, 967, 968}  # coffee mug, espresso, cup


@pytest.fixture(scope="module")
def state():
    return load_state_dict(checkpoint_path())


@pytest.fixture(scope="module")
def imagenet(state):
    return load_imagenet_weights(efficientnet_lite0((224, 224, 3)), state)


def test_checkpoint_is_read_without_torch(state):
    assert "torch" not in sys.modules
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
    assert state["_fc.weight"].shape == (1000, 1280) and state["_fc.weight"].dtype == np.float32
    assert np.all(state["_bn1.running_var"] > 0)


@pytest.mark.slow
def test_imagenet_classes_of_known_photos(imagenet):
    pixels = np.stack(
        [prepare_image(Image.fromarray(img), (224, 224)) for img in (data.chelsea(), data.coffee())]
    )
    top1 = imagenet.predict(pixels, verbose=0).argmax(axis=1)
    assert top1[0] in CATS and top1[1] in COFFEE, top1


def test_unused_checkpoint_tensor_is_an_error(state):
    model = efficientnet_lite0((64, 64, 3), include_top=False)
    load_imagenet_weights(model, state)  # no classifier: _fc.* may stay unused
    with pytest.raises(ValueError, match="not used"):
        load_imagenet_weights(model, {**state, "_blocks.16._bn1.weight": np.zeros(3, np.float32)})


# --- reading both .pth formats, written here with stand-in torch globals ---------------


def _write_checkpoint(
    path, tensors: dict[str, tuple[str, int, tuple, tuple]], storages: dict, fmt: str, monkeypatch
):
    """A state dict as torch would save it: tensors are (storage key, offset, size, stride)."""
    torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):
        raise AssertionError("only pickled, never called")

    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    float_storage = type("FloatStorage", (), {"__module__": "torch"})
    torch.FloatStorage, torch._utils = float_storage, utils
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)

    class Key(str):
        pass

    class Tensor:
        def __init__(self, key, offset, size, stride):
            self.args = (Key(key), offset, size, stride, False, collections.OrderedDict())

        def __reduce__(self):
            return _rebuild_tensor_v2, self.args

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if type(obj) is Key:
                numel = storages[obj].size
                return ("storage", float_storage, str(obj), "cpu", numel) + (
                    (None,) if fmt == "legacy" else ()
                )
            return None

    state = collections.OrderedDict((name, Tensor(*spec)) for name, spec in tensors.items())
    if fmt == "legacy":
        with open(path, "wb") as f:
            for obj in (LEGACY_MAGIC, 1001, {"protocol_version": 1001, "little_endian": True}):
                pickle.dump(obj, f, protocol=2)
            Pickler(f, protocol=2).dump(state)
            pickle.dump(list(storages), f, protocol=2)
            for arr in storages.values():
                f.write(struct.pack("<q", arr.size) + arr.astype("<f4").tobytes())
    else:
        with zipfile.ZipFile(path, "w") as zf:
            with zf.open("archive/data.pkl", "w") as f:
                Pickler(f, protocol=2).dump(state)
            for key, arr in storages.items():
                zf.writestr(f"archive/data/{key}", arr.astype("<f4").tobytes())


@pytest.mark.parametrize("fmt", ["legacy", "zip"])
def test_both_checkpoint_formats_with_strided_and_shared_storage(tmp_path, monkeypatch, fmt):
    flat = np.arange(12, dtype=np.float32)
    path = tmp_path / "w.pth"
    tensors = {
        "a": ("0", 0, (3, 4), (4, 1)),
        "a_t": ("0", 0, (4, 3), (1, 4)),  # transposed view of the same storage
        "tail": ("0", 8, (4,), (1,)),
        "b": ("1", 0, (2,), (1,)),
    }
    _write_checkpoint(path, tensors, {"0": flat, "1": np.array([5.0, 6.0], np.float32)}, fmt, monkeypatch)
    monkeypatch.delitem(sys.modules, "torch")
    got = load_state_dict(path)
    np.testing.assert_array_equal(got["a"], flat.reshape(3, 4))
    np.testing.assert_array_equal(got["a_t"], flat.reshape(3, 4).T)
    np.testing.assert_array_equal(got["tail"], [8, 9, 10, 11])
    np.testing.assert_array_equal(got["b"], [5, 6])


class _Payload:
    """Creates ``marker`` when unpickled by plain pickle: proof that a checkpoint ran code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


LEGACY_POSITIONS = ["magic", "protocol", "sys_info", "state_dict", "storage_keys"]


@pytest.mark.parametrize("position", [*LEGACY_POSITIONS, "zip_data_pkl"])
def test_no_pickle_position_of_a_checkpoint_runs_code(tmp_path, position):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    if position == "zip_data_pkl":
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("archive/data.pkl", pickle.dumps(_Payload(marker), protocol=2))
    else:
        fields = {"magic": LEGACY_MAGIC, "protocol": 1001, "sys_info": {"little_endian": True},
                  "state_dict": collections.OrderedDict(), "storage_keys": []}
        fields[position] = _Payload(marker)
        with open(path, "wb") as f:
            for name in LEGACY_POSITIONS:
                pickle.dump(fields[name], f, protocol=2)
    with pytest.raises((pickle.UnpicklingError, ValueError)):
        load_state_dict(path)
    assert not marker.exists()


@pytest.mark.parametrize("fmt", ["legacy", "zip"])
@pytest.mark.parametrize(
    "view",
    [("0", 0, (3, 5), (4, 1)), ("0", 10, (3,), (1,)), ("0", 0, (2, 2), (100, 1)), ("0", -1, (2,), (1,))],
    ids=["size", "offset", "stride", "negative"],
)
def test_tensor_views_past_their_storage_are_refused(tmp_path, monkeypatch, fmt, view):
    path = tmp_path / "w.pth"
    _write_checkpoint(path, {"a": view}, {"0": np.arange(12, dtype=np.float32)}, fmt, monkeypatch)
    monkeypatch.delitem(sys.modules, "torch")
    with pytest.raises(ValueError, match="tensor view"):
        load_state_dict(path)


def test_checkpoint_cannot_run_code(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        for obj in (LEGACY_MAGIC, 1001, {"little_endian": True}):
            pickle.dump(obj, f, protocol=2)
        f.write(b"cos\nsystem\n(S'echo pwned'\ntR.")
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        load_state_dict(path)


# --- prepare_image and compact weights ---------------------------------------------------


@pytest.mark.parametrize(
    "img",
    [
        Image.new("L", (60, 80), 0),
        Image.new("RGBA", (301, 77), (0, 0, 0, 0)),
        Image.new("P", (7, 13)),
        Image.new("CMYK", (999, 1001)),
    ],
    ids=["gray", "rgba-wide", "palette-tiny", "cmyk-odd"],
)
def test_prepare_image_shape_and_dtype(img):
    out = prepare_image(img, (128, 96))
    assert out.shape == (128, 96, 3) and out.dtype == np.uint8


def test_prepare_image_pads_with_white_instead_of_cropping():
    portrait = Image.new("RGB", (60, 80), (200, 0, 0))  # a red 60x80 product shot
    out = prepare_image(portrait, (96, 96))
    assert (out[:, :5] == 255).all() and (out[:, -5:] == 255).all()  # white side bars
    assert (out[:, 40:56] == (200, 0, 0)).all() and (out[0, 40:56] == (200, 0, 0)).all()  # full height kept
    transparent = prepare_image(Image.new("RGBA", (50, 50), (0, 0, 0, 0)), (32, 32))
    assert (transparent == 255).all()


def test_float16_weights_round_trip(tmp_path):
    model = build_image_classifier(4, (64, 48))
    model.get_layer("head").set_weights([np.random.default_rng(0).normal(size=(1280, 4)), np.zeros(4)])
    path = tmp_path / "image.npz"
    export_weights_float16(model, path)
    rebuilt = load_weights_float16(build_image_classifier(4, (64, 48), imagenet=False), path)
    pixels = np.stack(
        [
            prepare_image(Image.fromarray(data.coffee()), (64, 48)),
            prepare_image(Image.fromarray(data.chelsea()), (64, 48)),
        ]
    )
    np.testing.assert_allclose(
        rebuilt.predict(pixels, verbose=0), model.predict(pixels, verbose=0), atol=0.02
    )
    with pytest.raises(ValueError, match="does not fit|shape"):
        load_weights_float16(build_image_classifier(5, (64, 48), imagenet=False), path)
