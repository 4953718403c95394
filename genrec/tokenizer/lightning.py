"""Thin LightningModules that fit a tokenizer with ``train.py fit`` and write its artifact when fit ends.

All read the catalogue from an :class:`~genrec.tokenizer.datamodule.ItemFeatures` datamodule and write
``output_dir`` on ``on_fit_end`` (skipped under ``fast_dev_run``, which must not overwrite a real artifact). The
RQ-KMeans and RQ-VAE modules derive the input width from the data (``input_dim`` is filled in at setup and saved
with the hyperparameters), encode every item in blocks of rows (never the (n, l, d) residuals: only codes, and the
last residuals' distances of the items that collide) and resolve collisions; ``ConstrainedKMeansTokenizer``
(ColaRec) has no width-dependent parameters and makes IDs unique by construction, so it has no collision step.
"""

from __future__ import annotations

import logging
import time

import torch
from torch import Tensor

from genrec.features.matrix import map_blocks
from genrec.tokenizer.artifact import SemanticIds
from genrec.tokenizer.collisions import CollisionOrder, CollisionStrategy
from genrec.tokenizer.constrained_kmeans import HierarchicalCodes, hierarchical_codes
from genrec.tokenizer.export import export_tokenizer, write_artifact
from genrec.tokenizer.fitting import (
    OneStepTokenizer,
    TokenizerModule,
    check_collision,
    collision_popularity,
    datamodule_features,
    derive_input_dim,
    derive_sizes,
)
from genrec.tokenizer.product import ProductKMeans
from genrec.tokenizer.residual import last_residual_distances, residual_codes
from genrec.tokenizer.rq_kmeans import ResidualKMeans
from genrec.tokenizer.rqvae import RQVAE

log = logging.getLogger(__name__)


class RQKMeansTokenizer(OneStepTokenizer):
    """Residual k-means (GRID) under Lightning: one training step fits all levels on the whole catalogue.

    Args:
        output_dir: artifact folder, e.g. ``tokenizers/beauty-rqkmeans``.
        input_dim: feature width; None to take it from the datamodule.
        levels: code levels l; None: from the catalogue size (:mod:`genrec.tokenizer.sizes`, logged).
        codebook_size: codes per level k; None: from the catalogue size.
        max_iter: Lloyd iterations at most per level.
        tol: relative inertia improvement below which a level stops.
        seed: k-means++ seed.
        collision: ``"extra_code"`` (TIGER) or ``"reassign"``; see ``genrec.tokenizer.collisions``.
        collision_order: order of the extra code within a colliding group: ``"index"`` (TIGER) or
            ``"popularity"`` (MMGRec: most training interactions first, counted on the datamodule's dataset).
        max_points_per_centroid: a level with more items than this times ``codebook_size`` is fitted on a sample
            of that many and refined on all items (``genrec.tokenizer.kmeans``); None: always on all items.
        refine_iter: Lloyd iterations at most over all items after a sample's.
    """

    def __init__(
        self,
        *,
        output_dir: str,
        input_dim: int | None = None,
        levels: int | None = None,
        codebook_size: int | None = None,
        max_iter: int = 100,
        tol: float = 1e-4,
        seed: int = 0,
        collision: CollisionStrategy = "extra_code",
        collision_order: CollisionOrder = "index",
        max_points_per_centroid: int | None = 256,
        refine_iter: int = 3,
    ) -> None:
        super().__init__()
        check_collision(collision, collision_order)
        self.save_hyperparameters()
        self.quantizer: ResidualKMeans | None = None
        if input_dim is not None and levels is not None and codebook_size is not None:
            self._build(input_dim)

    def _build(self, input_dim: int) -> None:
        hp = self.hparams
        self.quantizer = ResidualKMeans(
            input_dim=input_dim,
            levels=hp.levels,
            codebook_size=hp.codebook_size,
            max_iter=hp.max_iter,
            tol=hp.tol,
            seed=hp.seed,
            max_points_per_centroid=hp.max_points_per_centroid,
            refine_iter=hp.refine_iter,
        )

    def setup(self, stage: str) -> None:
        features, _ = datamodule_features(self.trainer)
        sized = derive_sizes(self, features.shape[0])
        if derive_input_dim(self, features) or sized:
            self._build(features.shape[1])

    method = "RQ-KMeans"

    @property
    def fitted(self) -> bool:
        return bool(self.quantizer.fitted)

    def fit_catalogue(self, batch: Tensor, features: Tensor) -> None:
        self.quantizer.fit(batch)

    def export(self, features: Tensor, data: dict) -> SemanticIds:
        x = features.to(self.device)
        codebooks = self.quantizer.codebooks
        return export_tokenizer(
            self.hparams.output_dir,
            features=x,
            raw_codes=self.quantizer.encode_catalogue(x),
            last_distances=lambda rows: last_residual_distances(x, codebooks, rows),
            reconstruct=lambda codes: map_blocks(self.quantizer.decode, codes),
            codebooks=self.quantizer.codebooks,
            collision=self.hparams.collision,
            config={"method": "rq-kmeans", "hparams": dict(self.hparams), "data": data},
            fit_seconds=self.fit_seconds,
            popularity=collision_popularity(self.trainer, self.hparams.collision_order, x.shape[0]),
        )


class ProductKMeansTokenizer(OneStepTokenizer):
    """Product k-means (RPG's long parallel IDs, :mod:`genrec.tokenizer.product`) under Lightning, in one step.

    Args:
        output_dir: artifact folder, e.g. ``tokenizers/beauty-text-cooc-pq32``.
        input_dim: feature width; None to take it from the datamodule.
        digits: ID length m (one subspace each).
        codebook_size: codes per digit k; None: from the catalogue size (:mod:`genrec.tokenizer.sizes`, logged).
        whiten: whiten the principal axes before the random rotation.
        max_iter: Lloyd iterations at most per digit.
        tol: relative inertia improvement below which a digit stops.
        seed: rotation and k-means++ seed.
        collision: ``"extra_code"`` or ``"reassign"`` (on the last digit) for items whose m codes coincide.
    """

    method = "product k-means"

    def __init__(
        self,
        *,
        output_dir: str,
        input_dim: int | None = None,
        digits: int = 32,
        codebook_size: int | None = None,
        whiten: bool = False,
        max_iter: int = 50,
        tol: float = 1e-4,
        seed: int = 0,
        collision: CollisionStrategy = "extra_code",
    ) -> None:
        super().__init__()
        check_collision(collision)
        self.save_hyperparameters()
        self.quantizer: ProductKMeans | None = None
        if input_dim is not None and codebook_size is not None:
            self._build(input_dim)

    def _build(self, input_dim: int) -> None:
        hp = self.hparams
        self.quantizer = ProductKMeans(
            input_dim=input_dim, digits=hp.digits, codebook_size=hp.codebook_size, whiten=hp.whiten,
            max_iter=hp.max_iter, tol=hp.tol, seed=hp.seed,
        )

    def setup(self, stage: str) -> None:
        features, _ = datamodule_features(self.trainer)
        sized = derive_sizes(self, features.shape[0], length="digits")
        if derive_input_dim(self, features) or sized:
            self._build(features.shape[1])

    @property
    def fitted(self) -> bool:
        return bool(self.quantizer.fitted)

    def fit_catalogue(self, batch: Tensor, features: Tensor) -> None:
        self.quantizer.fit(batch)

    def export(self, features: Tensor, data: dict) -> SemanticIds:
        x = features.to(self.device)
        return export_tokenizer(
            self.hparams.output_dir,
            features=x,
            raw_codes=map_blocks(self.quantizer.encode, x),
            last_distances=lambda rows: self.quantizer.last_distances(x[rows]),
            reconstruct=self.quantizer.decode,
            codebooks=self.quantizer.codebooks,
            collision=self.hparams.collision,
            # "levels" names the ID length for tables (genrec.report), as for the residual tokenizers.
            config={"method": "product k-means", "hparams": {**dict(self.hparams), "levels": self.hparams.digits},
                    "data": data},
            fit_seconds=self.fit_seconds,
        )


class RQVAETokenizer(TokenizerModule):
    """TIGER's RQ-VAE under Lightning: AdamW on reconstruction + quantization loss, dead-code re-seeding.

    The first training batch sets the input standardisation and k-means-initialises the codebooks. Codes that no
    item of an epoch picked are re-seeded at the next step from random residuals of that step's batch.

    Args:
        output_dir: artifact folder, e.g. ``tokenizers/beauty-rqvae``.
        input_dim: feature width; None to take it from the datamodule.
        encoder_dims: encoder widths after the input, the last being the latent width (TIGER: 512, 256, 128, 32).
        levels: code levels l; None: from the catalogue size (:mod:`genrec.tokenizer.sizes`, logged).
        codebook_size: codes per level k; None: from the catalogue size.
        beta: commitment weight (TIGER: 0.25).
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        collision: ``"extra_code"`` (TIGER) or ``"reassign"``; see ``genrec.tokenizer.collisions``.
        collision_order: order of the extra code within a colliding group: ``"index"`` (TIGER) or
            ``"popularity"`` (MMGRec: most training interactions first, counted on the datamodule's dataset).
    """

    def __init__(
        self,
        *,
        output_dir: str,
        input_dim: int | None = None,
        encoder_dims: tuple[int, ...] = (512, 256, 128, 32),
        levels: int | None = None,
        codebook_size: int | None = None,
        beta: float = 0.25,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        collision: CollisionStrategy = "extra_code",
        collision_order: CollisionOrder = "index",
    ) -> None:
        super().__init__()
        check_collision(collision, collision_order)
        self.save_hyperparameters()
        self.model: RQVAE | None = None
        self.fit_start = 0.0
        self._dead: Tensor | None = None
        if input_dim is not None and levels is not None and codebook_size is not None:
            self._build(input_dim)

    def _build(self, input_dim: int) -> None:
        hp = self.hparams
        self.model = RQVAE(
            input_dim=input_dim,
            encoder_dims=tuple(hp.encoder_dims),
            levels=hp.levels,
            codebook_size=hp.codebook_size,
            beta=hp.beta,
        )
        # Per-code pick counts over the current epoch, for dead-code re-seeding and the usage log.
        self.register_buffer("usage", torch.zeros(hp.levels, hp.codebook_size, dtype=torch.long), persistent=False)

    method = "RQ-VAE"

    def setup(self, stage: str) -> None:
        features, _ = datamodule_features(self.trainer)
        sized = derive_sizes(self, features.shape[0])
        if features.shape[0] < self.hparams.codebook_size:
            raise ValueError(
                f"RQ-VAE: cannot fit {self.hparams.codebook_size} codes per level to {features.shape[0]} items; "
                "use a smaller codebook_size"
            )
        if derive_input_dim(self, features) or sized:
            self._build(features.shape[1])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.model.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)

    def on_fit_start(self) -> None:
        self.fit_start = time.perf_counter()

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        if not bool(self.model.initialized):
            self.model.initialize(batch)
        if self._dead is not None:
            # Before the real forward: editing codebooks after it would invalidate the autograd graph.
            with torch.no_grad():
                residuals = self.model.quantize(self.model.encode(batch)).residuals
            n = self.model.reseed_codes(self._dead.to(self.device), residuals)
            self.log("train/reseeded_codes", float(n), on_step=True, on_epoch=False)
            self._dead = None
        out = self.model(batch)
        self.usage += torch.stack(
            [torch.bincount(out.codes[:, j], minlength=self.hparams.codebook_size) for j in range(out.codes.shape[1])]
        )
        self.log_dict(
            {
                "train/loss": out.loss,
                "train/reconstruction_loss": out.reconstruction_loss,
                "train/quantization_loss": out.quantization_loss,
            },
            prog_bar=True,
            on_step=True,
            on_epoch=True,
        )
        return out.loss

    def on_train_epoch_end(self) -> None:
        used = self.usage > 0
        for j, fraction in enumerate(used.float().mean(dim=1).tolist()):
            self.log(f"train/usage/level_{j}", fraction)
        if not bool(used.all()):
            self._dead = ~used
        self.usage.zero_()

    def export(self, features: Tensor, data: dict) -> SemanticIds:
        fit_seconds = time.perf_counter() - self.fit_start
        self.model.eval()
        x = features.to(self.device)
        model = self.model
        return export_tokenizer(
            self.hparams.output_dir,
            features=x,
            # The encoder and decoder run on blocks of items too: their hidden layers are wider than the features.
            raw_codes=residual_codes(x, model.codebooks, encoder=model.encode),
            last_distances=lambda rows: last_residual_distances(x, model.codebooks, rows, encoder=model.encode),
            reconstruct=lambda codes: map_blocks(lambda block: model.decode(model.decode_codes(block)), codes),
            codebooks=self.model.codebooks,
            collision=self.hparams.collision,
            config={"method": "rq-vae", "hparams": dict(self.hparams), "data": data},
            fit_seconds=fit_seconds,
            popularity=collision_popularity(self.trainer, self.hparams.collision_order, x.shape[0]),
        )


class ConstrainedKMeansTokenizer(OneStepTokenizer):
    """ColaRec's item IDs under Lightning: hierarchical size-constrained k-means, then the index within the leaf.

    One training step clusters the whole catalogue with
    :func:`~genrec.tokenizer.constrained_kmeans.hierarchical_codes`. The IDs are unique by construction, so there is
    no collision step: ``on_fit_end`` measures and writes them directly (skipped under ``fast_dev_run``), with level
    sizes (branching..., largest leaf). The artifact has no codebooks.pt: a level's centroids depend on the parent
    cluster, which an (l, k, d) codebook cannot hold; the reconstruction metric uses each item's leaf centroid.

    Args:
        output_dir: artifact folder, e.g. ``tokenizers/beauty-colarec``.
        branching: clusters per level (ColaRec: 32, 32).
        max_iter: Lloyd iterations at most per clustering.
        tol: relative inertia improvement below which a clustering stops.
        seed: base k-means++ seed.
    """

    def __init__(
        self,
        *,
        output_dir: str,
        branching: tuple[int, ...] = (32, 32),
        max_iter: int = 50,
        tol: float = 1e-4,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not branching or min(branching) < 1:
            raise ValueError(f"branching must be a non-empty sequence of positive cluster counts, got {branching}")
        self.save_hyperparameters()
        self.result: HierarchicalCodes | None = None

    def setup(self, stage: str) -> None:
        datamodule_features(self.trainer)  # fail before fitting when the datamodule is not ItemFeatures

    method = "constrained k-means"

    @property
    def fitted(self) -> bool:
        return self.result is not None

    def fit_catalogue(self, batch: Tensor, features: Tensor) -> None:
        # The datamodule's matrix, not the batch: the codes are per dense item, so row order must be item order.
        self.result = hierarchical_codes(
            features.to(batch.device),
            tuple(self.hparams.branching),
            max_iter=self.hparams.max_iter,
            tol=self.hparams.tol,
            seed=self.hparams.seed,
        )

    def export(self, features: Tensor, data: dict) -> SemanticIds:
        codes, level_sizes, reconstruction = self.result
        return write_artifact(
            self.hparams.output_dir,
            features=features.to(codes.device),
            codes=codes,
            # The cluster path before the leaf index: collision_rate / max_group then say how items share leaves
            # (max_group = the largest leaf), as they say how items share IDs before TIGER's extra code.
            raw_codes=codes[:, :-1],
            reconstruction=reconstruction,
            level_sizes=level_sizes,
            codebooks=None,
            # "collision" names what makes the IDs unique and "collision_order" what orders the items of a leaf.
            config={
                "method": "constrained-kmeans",
                "hparams": dict(self.hparams),
                "data": data,
                "collision": "leaf_index",
                "collision_order": "distance",
            },
            fit_seconds=self.fit_seconds,
        )
