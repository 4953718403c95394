"""Datasets, formats, the leave-one-out protocol and item features."""

from genrec.data.dataset import BUNDLED, SequenceDataset, load_dataset, resolve
from genrec.data.formats import DataFormatError
from genrec.data.split import Samples, Split, item_popularity, leave_one_out, training_interactions, training_part

__all__ = [
    "BUNDLED",
    "DataFormatError",
    "Samples",
    "SequenceDataset",
    "Split",
    "item_popularity",
    "leave_one_out",
    "load_dataset",
    "resolve",
    "training_interactions",
    "training_part",
]
