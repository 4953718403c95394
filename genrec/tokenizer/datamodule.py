"""``ItemFeatures``: the LightningDataModule that feeds item feature vectors to a tokenizer."""

from __future__ import annotations

import lightning.pytorch as pl
from torch import Tensor
from torch.utils.data import DataLoader

from genrec.features import FeatureSource, TextEmbeddings, check_finite, load_features


class ItemFeatures(pl.LightningDataModule):
    """The fused feature matrix of a dataset's items, served in shuffled batches of rows.

    Args:
        dataset: dataset name (e.g. ``amazon-beauty``) or path, passed to each feature source; None only with
            ``features`` (a config that leaves it null, a recipe, is given one with ``--data.dataset``).
        sources: feature sources, fused as ``genrec.features.source`` describes; default: text embeddings.
        batch_size: rows per batch; None for the whole catalogue in one batch (what RQ-KMeans needs).
        num_workers: DataLoader workers (rows are in memory; 0 is right almost always).
        features: (n_items, d) float, a precomputed matrix used instead of ``sources`` (tests, notebooks).
    """

    def __init__(
        self,
        *,
        dataset: str | None = "amazon-beauty",
        sources: list[FeatureSource] | None = None,
        batch_size: int | None = 1024,
        num_workers: int = 0,
        features: Tensor | None = None,
    ) -> None:
        super().__init__()
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 or None (whole catalogue), got {batch_size}")
        if dataset is None and features is None:
            raise ValueError("ItemFeatures: no dataset: name one with --data.dataset (a bundled name or a path)")
        self.dataset = dataset
        self.sources = list(sources) if sources is not None else [TextEmbeddings()]
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.features: Tensor | None = None
        self.precomputed = features is not None
        if features is not None:
            check_finite(features, what="ItemFeatures(features=...)")
            self.features = features.float()

    def setup(self, stage: str | None = None) -> None:
        if self.features is None:
            self.features = load_features(self.dataset, self.sources)

    def _loaded(self) -> Tensor:
        if self.features is None:
            raise RuntimeError("ItemFeatures.setup() has not run yet")
        return self.features

    def train_dataloader(self) -> DataLoader:
        features = self._loaded()
        # A tensor is a map-style dataset of its rows; default collation stacks them into (b, d).
        return DataLoader(
            features,
            batch_size=self.batch_size or features.shape[0],
            # One whole-catalogue batch stays in item order, so RQ-KMeans does not depend on the shuffle.
            shuffle=self.batch_size is not None,
            num_workers=self.num_workers,
        )

    def describe(self) -> dict:
        """JSON-able description for the tokenizer's config.json."""
        return {
            "dataset": str(self.dataset),
            "sources": "precomputed" if self.precomputed else [source.describe() for source in self.sources],
            "batch_size": self.batch_size,
        }
