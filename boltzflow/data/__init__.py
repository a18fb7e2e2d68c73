"""Data sets read from disk or shipped with a dependency: binary images for the VAE (boltzflow.data.datasets) and
the IDX reader of MNIST-style files (boltzflow.data.idx)."""

from boltzflow.data.datasets import DATASETS, DataSettings, Dataset, load_dataset
from boltzflow.data.idx import read_idx, write_idx

__all__ = ["DATASETS", "DataSettings", "Dataset", "load_dataset", "read_idx", "write_idx"]
