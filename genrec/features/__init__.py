"""Item features: every source an item tokenizer can quantize, their fusion, fingerprint and on-disk cache.

- ``source``: the :class:`FeatureSource` protocol, :class:`NpyFeatures`, :class:`TextEmbeddings`, fusion
  (:func:`load_features` in memory, :func:`fuse_to_npy` in blocks of rows into a ``.npy`` file) and
  :func:`feature_fingerprint`;
- ``matrix``: blocks of rows of an (n, d) tensor, array or memmap, for what must not hold a whole matrix;
- ``text``: item text embeddings from any HuggingFace encoder;
- ``image``: item image embeddings from any HuggingFace vision encoder (:class:`ImageEmbeddings`);
- ``cooccurrence``: PPMI + SVD of training co-occurrence (:class:`CooccurrenceFeatures`);
- ``graph`` and ``sage``: MMGRec's GraphSAGE encoder over the training graph (:class:`GraphFeatures`);
- ``cache``: the one writer and reader of cached (n_items, d) matrices.

Only ``source``, ``matrix`` and ``cache`` load with the package, as they are all that reading a tokenizer artifact needs; the
names of the other modules load on first use (``genrec.features.GraphFeatures``), so that importing
``genrec.tokenizer`` does not import the datasets, PIL or (through torchmetrics, under the graph encoder's BPR loss)
transformers.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from genrec.features.cache import cache_root
from genrec.features.source import (
    FeatureSource,
    Normalization,
    NpyFeatures,
    TextEmbeddings,
    check_finite,
    feature_fingerprint,
    fuse_features,
    fuse_to_npy,
    load_features,
    normalize_features,
)

if TYPE_CHECKING:
    from genrec.features.cooccurrence import CooccurrenceFeatures, cooccurrence_embeddings
    from genrec.features.graph import GraphFeatures, graph_item_embeddings
    from genrec.features.image import ImageEmbeddings, dataset_image_embeddings
    from genrec.features.text import item_texts, text_embeddings

_LAZY = {
    "CooccurrenceFeatures": "cooccurrence",
    "cooccurrence_embeddings": "cooccurrence",
    "GraphFeatures": "graph",
    "graph_item_embeddings": "graph",
    "ImageEmbeddings": "image",
    "dataset_image_embeddings": "image",
    "item_texts": "text",
    "text_embeddings": "text",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f"genrec.features.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CooccurrenceFeatures",
    "FeatureSource",
    "GraphFeatures",
    "ImageEmbeddings",
    "Normalization",
    "NpyFeatures",
    "TextEmbeddings",
    "cache_root",
    "check_finite",
    "cooccurrence_embeddings",
    "dataset_image_embeddings",
    "feature_fingerprint",
    "fuse_features",
    "fuse_to_npy",
    "graph_item_embeddings",
    "item_texts",
    "load_features",
    "normalize_features",
    "text_embeddings",
]
