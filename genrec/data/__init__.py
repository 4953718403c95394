"""Datasets, formats and the leave-one-out protocol (item features: ``genrec.features``)."""

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
