"""Item tokenizers: item feature vectors -> unique semantic IDs (tuples of codes).

Pipeline: feature sources (``genrec.features``) -> RQ-KMeans (``rq_kmeans``) or RQ-VAE (``rqvae``) -> collision handling
(``collisions``) -> artifact ``tokenizers/<name>/`` (``artifact``), read back with :func:`load_tokenizer`.

The Lightning pieces (``genrec.tokenizer.lightning.RQKMeansTokenizer`` / ``RQVAETokenizer`` and
``genrec.tokenizer.datamodule.ItemFeatures``) are not imported here, so reading an artifact does not import Lightning.
Batched k-means lives in ``genrec.tokenizer.kmeans`` (not re-exported: the function would shadow the module name).
"""

from genrec.tokenizer.artifact import SemanticIds, load_tokenizer, save_tokenizer
from genrec.tokenizer.collisions import (
    CollisionOrder,
    CollisionStats,
    CollisionStrategy,
    append_collision_code,
    assert_unique,
    collision_stats,
    reassign_last_level,
    resolve_collisions,
)
from genrec.tokenizer.residual import Quantization, decode_codes, residual_quantize
from genrec.tokenizer.rq_kmeans import ResidualKMeans
from genrec.tokenizer.rqvae import RQVAE, RQVAEOutput

__all__ = [
    "RQVAE",
    "CollisionOrder",
    "CollisionStats",
    "CollisionStrategy",
    "Quantization",
    "RQVAEOutput",
    "ResidualKMeans",
    "SemanticIds",
    "append_collision_code",
    "assert_unique",
    "collision_stats",
    "decode_codes",
    "load_tokenizer",
    "reassign_last_level",
    "resolve_collisions",
    "residual_quantize",
    "save_tokenizer",
]
