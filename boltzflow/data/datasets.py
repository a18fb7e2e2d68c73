"""Binary image data sets for the variational autoencoder (SNF paper sec. 5, Table 3): a config's ``target``
section when the method is ``vae``::

    target: digits                                    # the 8x8 digits shipped with scikit-learn (no download)
    target: {dataset: mnist, path: DIR}               # DIR holds the IDX files (gzipped or not)
    target: {dataset: fashion_mnist, path: DIR, n_train: 10000}

- ``digits``: scikit-learn's 1797 8x8 handwritten digits (pixel values 0..16); the fixed split is a permutation by
  ``numpy.random.default_rng(0)``, its last 360 images the test set (20 %), the other 1437 the training set.
- ``mnist`` / ``fashion_mnist``: 28x28 images from ``train-images-idx3-ubyte`` and ``t10k-images-idx3-ubyte``
  (``.gz`` or not) in ``path``, the official train / test split (boltzflow.data.idx).

Pixels are scaled to [0, 1] by the format's maximum (16, 255) and binarised once, ``x = pixel > threshold``
(fixed binarisation). ``n_train`` keeps the first n training images (CPU-sized runs); the test set is whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from boltzflow.data.idx import read_idx
from boltzflow.errors import BoltzflowError

DATASETS = ("digits", "mnist", "fashion_mnist")
IDX_FILES = {"train": "train-images-idx3-ubyte", "test": "t10k-images-idx3-ubyte"}
DIGITS_TEST = 360


@dataclass(frozen=True)
class DataSettings:
    """A config's ``target`` section for method ``vae`` (module docstring)."""

    dataset: str = "digits"
    path: str | None = None  # folder of the IDX files (mnist, fashion_mnist)
    threshold: float = 0.5  # binarisation of pixels scaled to [0, 1]
    n_train: int | None = None  # first n training images only

    def __post_init__(self):
        if self.dataset not in DATASETS:
            raise BoltzflowError(f"unknown dataset {self.dataset!r}; known: {', '.join(DATASETS)}")
        if self.dataset == "digits" and self.path is not None:
            raise BoltzflowError("dataset digits ships with scikit-learn; it takes no path")
        if self.dataset != "digits" and self.path is None:
            raise BoltzflowError(f"dataset {self.dataset} needs path: the folder of its IDX files "
                                 f"({IDX_FILES['train']}[.gz], {IDX_FILES['test']}[.gz])")
        if not 0.0 < self.threshold < 1.0:
            raise BoltzflowError(f"threshold must be in (0, 1), got {self.threshold!r}")
        if self.n_train is not None and self.n_train < 1:
            raise BoltzflowError(f"n_train must be a positive integer, got {self.n_train!r}")


@dataclass(frozen=True)
class Dataset:
    """Binarised images as float32 rows: ``train`` (n, h * w), ``test`` (m, h * w); ``shape`` = (h, w)."""

    name: str
    train: np.ndarray
    test: np.ndarray
    shape: tuple[int, int]

    @property
    def dim(self) -> int:
        return self.train.shape[1]


def load_dataset(s: DataSettings) -> Dataset:
    """The binarised data set of the settings (module docstring)."""
    if s.dataset == "digits":
        train, test, scale, shape = *_digits(), 16.0, (8, 8)
    else:
        train, test = (_idx_images(Path(s.path), IDX_FILES[part]) for part in ("train", "test"))
        if train.shape[1:] != test.shape[1:]:
            raise BoltzflowError(f"{s.path}: training images {train.shape[1:]} and test images {test.shape[1:]} differ")
        scale, shape = 255.0, train.shape[1:]
    train = train[: s.n_train] if s.n_train is not None else train
    binarise = lambda a: (a.reshape(a.shape[0], -1) / scale > s.threshold).astype(np.float32)  # noqa: E731
    return Dataset(s.dataset, binarise(train), binarise(test), tuple(int(n) for n in shape))


def _digits() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise BoltzflowError("dataset digits needs scikit-learn: pip install 'boltzflow[vae]'") from None
    images = load_digits().data
    order = np.random.default_rng(0).permutation(images.shape[0])
    return images[order[:-DIGITS_TEST]], images[order[-DIGITS_TEST:]]


def _idx_images(folder: Path, stem: str) -> np.ndarray:
    """(n, h, w) uint8 images of ``folder/stem`` or ``folder/stem.gz``."""
    found = [folder / name for name in (stem, stem + ".gz") if (folder / name).is_file()]
    if not found:
        raise BoltzflowError(f"{folder}: no IDX file {stem} or {stem}.gz")
    images = read_idx(found[0])
    if images.ndim != 3 or images.dtype != np.uint8:
        raise BoltzflowError(f"IDX file {str(found[0])!r}: expected uint8 images (n, h, w), got {images.dtype} "
                             f"{images.shape}")
    return images
