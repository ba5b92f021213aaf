"""Training the image classifier: a softmax head on cached features, optional GPU fine-tune."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from models.image import DEFAULT_BACKBONE, build_image_classifier
from training.image_features import load_pixels


def _head(num_classes: int, dropout: float, l2: float, dim: int = 1280) -> keras.Model:
    """Same layers as the top of ``models.image.build_image_classifier`` (dropout, ``head``)."""
    inputs = keras.Input((dim,), name="features")
    x = keras.layers.Dropout(dropout, name="head_dropout")(inputs)
    reg = keras.regularizers.L2(l2) if l2 else None
    outputs = keras.layers.Dense(num_classes, activation="softmax", kernel_regularizer=reg, name="head")(x)
    return keras.Model(inputs, outputs)


def balanced_class_weights(y: np.ndarray, num_classes: int, power: float = 0.5) -> dict[int, float]:
    """``(n / (k * count)) ** power``: ``power=1`` fully balanced, 0.5 a softer compromise.

    The catalogue is skewed (Tshirts ~7k, some types 20); full balancing over-predicts rare
    classes, no weighting ignores them. Weights are normalised to mean 1 over samples.
    """
    counts = np.bincount(y, minlength=num_classes).astype(np.float64)
    w = np.where(counts > 0, (len(y) / (num_classes * np.maximum(counts, 1))) ** power, 0.0)
    w /= (w[y]).mean()
    return {i: float(w[i]) for i in range(num_classes)}


def train_head(
    features_train: np.ndarray,
    y_train: np.ndarray,
    features_val: np.ndarray,
    y_val: np.ndarray,
    num_classes: int,
    epochs: int = 40,
    seed: int = 13,
    *,
    dropout: float = 0.2,
    l2: float = 1e-4,
    label_smoothing: float = 0.1,
    class_weight_power: float = 0.0,
    learning_rate: float = 1e-3,
    batch_size: int = 256,
    patience: int = 6,
    verbose: int | str = "auto",
) -> tuple[list[np.ndarray], dict[str, list[float]]]:
    """Adam-trained softmax head; returns ([kernel, bias] of the best epoch, history).

    The best epoch is the one with the lowest validation loss (early stopping with
    ``patience``). Label smoothing keeps the probabilities softer, which the KL-based
    taxonomy choice downstream consumes; ``class_weight_power`` > 0 up-weights rare classes.
    Place the weights with ``model.get_layer("head").set_weights(weights)``.
    """
    keras.utils.set_random_seed(seed)
    model = _head(num_classes, dropout, l2, features_train.shape[1])
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing),
        metrics=["accuracy"],
    )
    fit = model.fit(
        features_train.astype(np.float32),
        keras.utils.to_categorical(y_train, num_classes),
        validation_data=(features_val.astype(np.float32), keras.utils.to_categorical(y_val, num_classes)),
        epochs=epochs,
        batch_size=batch_size,
        class_weight=balanced_class_weights(y_train, num_classes, class_weight_power)
        if class_weight_power
        else None,
        callbacks=[keras.callbacks.EarlyStopping("val_loss", patience=patience, restore_best_weights=True)],
        verbose=verbose,
    )
    history = {k: [float(v) for v in vs] for k, vs in fit.history.items()}
    return model.get_layer("head").get_weights(), history


def _augment(pixels: tf.Tensor, image_size: tuple[int, int]) -> tf.Tensor:
    """Random flip, up-to-12% crop then resize back, brightness ±20%; stays uint8 0..255."""
    x = tf.image.random_flip_left_right(tf.cast(pixels, tf.float32))
    scale = tf.random.uniform([], 0.88, 1.0)
    crop = tf.cast(tf.cast(image_size, tf.float32) * scale, tf.int32)
    x = tf.image.random_crop(x, tf.concat([crop, [3]], 0))
    x = tf.image.resize(x, image_size)
    x = x * tf.random.uniform([], 0.8, 1.2)
    return tf.cast(tf.clip_by_value(tf.round(x), 0, 255), tf.uint8)


def fine_tune(
    model: keras.Model,
    train_paths: list[str],
    y: np.ndarray,
    val_paths: list[str] | None = None,
    y_val: np.ndarray | None = None,
    epochs: int = 5,
    unfreeze_from_block: int = 11,
    learning_rate: float = 1e-4,
    batch_size: int = 64,
    seed: int = 13,
    force: bool = False,
    backbone_name: str = DEFAULT_BACKBONE,
) -> dict[str, list[float]] | None:
    """Fine-tune the top backbone blocks of a ``build_image_classifier`` model (GPU only).

    Run after the head was trained on cached features (a random head would wreck the
    backbone). Unfreezes blocks ``unfreeze_from_block``..15 and the 1280 head conv (for a
    ``keras:`` backbone: its top 30% of layers), keeps
    BatchNorm in inference mode, trains with mixed_float16 on augmented images from
    tf.data. Returns the history, or None without a GPU unless ``force``.
    """
    if not (force or tf.config.list_physical_devices("GPU")):
        return None
    keras.utils.set_random_seed(seed)
    image_size, num_classes = tuple(model.input_shape[1:3]), model.output_shape[-1]
    previous_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")  # applies to layers built now
    try:
        work = build_image_classifier(num_classes, image_size, imagenet=False, backbone=backbone_name)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
    work.set_weights(model.get_weights())
    backbone = work.get_layer("backbone")
    backbone.trainable = True
    names = [layer.name for layer in backbone.layers]
    first = next((i for i, n in enumerate(names) if n.startswith(f"block{unfreeze_from_block}_")),
                 int(len(names) * 0.7))
    for i, layer in enumerate(backbone.layers):
        # BN statistics and affine stay frozen: batches of one product type would skew them.
        layer.trainable = i >= first and not isinstance(layer, keras.layers.BatchNormalization)

    def dataset(paths, labels, train: bool) -> tf.data.Dataset:
        def load(path, label):
            pixels = tf.numpy_function(lambda p: load_pixels(p.decode(), image_size), [path], tf.uint8)
            pixels = tf.ensure_shape(pixels, (*image_size, 3))
            return (_augment(pixels, image_size) if train else pixels), label

        ds = tf.data.Dataset.from_tensor_slices((list(paths), np.asarray(labels)))
        ds = ds.shuffle(len(paths), seed=seed) if train else ds
        return ds.map(load, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size).prefetch(tf.data.AUTOTUNE)

    # Keras wraps the optimizer in a LossScaleOptimizer for the mixed_float16 model.
    work.compile(
        keras.optimizers.Adam(learning_rate), "sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    val = dataset(val_paths, y_val, train=False) if val_paths is not None else None
    fit = work.fit(dataset(train_paths, y, train=True), validation_data=val, epochs=epochs)
    model.set_weights(work.get_weights())
    return {k: [float(v) for v in vs] for k, vs in fit.history.items()}
