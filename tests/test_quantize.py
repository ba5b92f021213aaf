"""training/quantize.py's pure parts: which images calibrate the 8-bit image model."""
import numpy as np

from training.quantize import calibration_rows


def test_calibration_takes_the_same_number_of_training_images_per_class_and_never_a_heldout_one():
    y = np.array([0] * 50 + [1] * 30 + [2] * 2)
    train = np.arange(0, 82, 2)  # every other row: 25, 15 and 1 of the classes
    rows = calibration_rows(y, train, 15)
    assert set(rows) <= set(train)
    counts = np.bincount(y[rows], minlength=3)
    assert counts.tolist() == [5, 5, 1]  # ceil(15 / 3) per class, all of a smaller one
    assert np.array_equal(rows, calibration_rows(y, train, 15))  # seeded
