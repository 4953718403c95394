"""Datasets, formats, the leave-one-out protocol and item features."""

from genrec.data.dataset import BUNDLED, SequenceDataset, load_dataset, resolve
from genrec.data.formats import DataFormatError
from genrec.data.split import Samples, Split, leave_one_out

__all__ = [
    "BUNDLED",
    "DataFormatError",
    "Samples",
    "SequenceDataset",
    "Split",
    "leave_one_out",
    "load_dataset",
    "resolve",
]
