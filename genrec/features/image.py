"""Item image embeddings from any HuggingFace vision encoder, cached on disk: the image modality of MSCGRec
(Vandenhirtz et al., 2026), whose image semantic IDs sit beside the text ones.

Which vector is an image's embedding depends on the encoder (:func:`pool_image_features`):

1. models with ``get_image_features`` (``CLIPModel``, ``SiglipModel``, ...): the image features in the joint
   image-text space (CLIP's projected pooled output, SigLIP's attention-pooled output);
2. otherwise an output's ``image_embeds`` (``CLIPVisionModelWithProjection``): the same projected features;
3. otherwise ``pooler_output`` (DINOv2: the layer-normed CLS token; ViT: its tanh pooler);
4. otherwise the CLS token, ``last_hidden_state[:, 0]``.

The vectors are returned raw (not L2-normalised); :class:`ImageEmbeddings` normalises them as a feature source.
No dataset bundled with genrec ships images: point ``image_dir`` at your own, one file per item.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from genrec.data.dataset import dataset_name, load_dataset
from genrec.features.cache import cache_path, encoder_slug, load_cached, save_cached
from genrec.features.source import FeatureSource, Normalization

log = logging.getLogger(__name__)

MissingImages = Literal["error", "zeros"]
MISSING_IMAGES: tuple[str, ...] = ("error", "zeros")
DEFAULT_PATTERN = "{item_id}.jpg"
_EXAMPLES = 5  # how many offending items an error message lists


def _examples(pairs: list[tuple[object, str | Path | None]]) -> str:
    shown = ", ".join(f"item {item!r}: {path}" for item, path in pairs[:_EXAMPLES])
    return shown + (", ..." if len(pairs) > _EXAMPLES else "")


def load_image(path: str | Path, *, item: object = None) -> Any:
    """Opens an image as RGB: EXIF rotation applied, transparency composited onto white.

    White, not black (what a plain ``convert("RGB")`` gives under a transparent pixel), because product photos with
    an alpha channel are cut-outs meant for a white page.

    Args:
        path: the image file.
        item: the item it belongs to, named in errors.

    Returns:
        a ``PIL.Image.Image`` in mode ``"RGB"``.

    Raises:
        ValueError: naming the file and the item when PIL cannot decode it.
    """
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
                rgba = image.convert("RGBA")
                image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
            return image.convert("RGB")  # decodes the whole file: a truncated one fails here, inside the try
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"{path}: cannot read the image of item {item!r}: {type(e).__name__}: {e}") from e


def _absent_images(paths: Sequence[str | Path | None], items: Sequence[object]) -> list[int]:
    """Indices of items without an image file; raises naming every file PIL does not recognise (a header check:
    no pixels are decoded, so this costs little beside the encoding)."""
    from PIL import Image

    absent, unreadable = [], []
    for i, path in enumerate(paths):
        if path is None or not Path(path).is_file():
            absent.append(i)
            continue
        try:
            with Image.open(path):
                pass
        except (OSError, ValueError, Image.DecompressionBombError):
            unreadable.append((items[i], Path(path)))
    if unreadable:
        raise ValueError(
            f"{len(unreadable)} of {len(paths)} image files cannot be read by PIL (corrupted, or not an image): "
            f"{_examples(unreadable)}"
        )
    return absent


def load_vision_encoder(encoder: str, *, device: str | torch.device = "cpu") -> tuple[Any, torch.nn.Module]:
    """The image processor and the model of a HF vision encoder (local folder or hub name), in eval mode.

    The class comes from the checkpoint's ``architectures`` when it has an image-embedding head: ``AutoModel``
    maps a saved ``CLIPVisionModelWithProjection`` to ``CLIPVisionModel``, silently dropping the projection.
    """
    import transformers
    from transformers import AutoConfig, AutoImageProcessor, AutoModel

    config = AutoConfig.from_pretrained(encoder)
    model_class: Any = AutoModel
    for name in getattr(config, "architectures", None) or ():
        candidate = getattr(transformers, name, None)
        if candidate is not None and (hasattr(candidate, "get_image_features") or name.endswith("WithProjection")):
            model_class = candidate
            break
    processor = AutoImageProcessor.from_pretrained(encoder)
    model = model_class.from_pretrained(encoder).to(device).eval()
    return processor, model


def pool_image_features(model: torch.nn.Module, pixel_values: Tensor) -> tuple[Tensor, str]:
    """One vector per image, chosen as the module docstring lists.

    Args:
        model: a HF vision model (or a dual encoder with ``get_image_features``).
        pixel_values: (b, 3, h, w), the image processor's output.

    Returns:
        (b, d) features in the model's dtype, and the name of the output they came from.
    """
    if hasattr(model, "get_image_features"):
        out = model.get_image_features(pixel_values=pixel_values)
        # transformers 4.x returns the tensor; 5.x a BaseModelOutputWithPooling whose pooler_output is projected.
        features, how = (out if isinstance(out, Tensor) else out.pooler_output), "get_image_features"
    else:
        out = model(pixel_values=pixel_values)
        if getattr(out, "image_embeds", None) is not None:
            features, how = out.image_embeds, "image_embeds"
        elif getattr(out, "pooler_output", None) is not None:
            features, how = out.pooler_output, "pooler_output"
        else:
            features, how = out.last_hidden_state[:, 0], "CLS token of last_hidden_state"
    if features.ndim == 4 and features.shape[2:] == (1, 1):  # CNN poolers (ResNet) keep (b, d, 1, 1)
        features = features.flatten(1)
    if features.ndim != 2:
        raise ValueError(
            f"{type(model).__name__}: expected one vector per image from {how}, got shape {tuple(features.shape)}"
        )
    return features, how


@torch.inference_mode()
def image_embeddings(
    paths: Sequence[str | Path | None],
    *,
    encoder: str,
    batch_size: int = 64,
    device: str | None = None,
    items: Sequence[object] | None = None,
    missing: MissingImages = "error",
    progress: bool = True,
) -> Tensor:
    """Embeds one image per item with a HF vision encoder (pooling as the module docstring lists).

    Every file is checked before the model loads, so a wrong folder or pattern fails in seconds, not after an
    hour of encoding. Items are never dropped: row i is always ``paths[i]``.

    Args:
        paths: one image file per item; None for an item known to have no image.
        encoder: HF model name (``openai/clip-vit-base-patch32``, ``facebook/dinov2-small``) or local folder with
            the model and its image processor.
        batch_size: images per forward pass.
        device: torch device; default CUDA when available.
        items: the item of each path (e.g. dataset item ids), named in errors; default the row index.
        missing: items whose file does not exist: ``"error"`` raises naming them; ``"zeros"`` gives them a zero row
            and logs how many. A file that exists but cannot be decoded is an error either way.
        progress: show a tqdm progress bar.

    Returns:
        (len(paths), d) float32.

    Raises:
        FileNotFoundError: images absent with ``missing="error"``, or none present at all.
        ValueError: unreadable images (naming the files and items), a bad argument.
    """
    from tqdm.auto import tqdm

    if missing not in MISSING_IMAGES:
        raise ValueError(f"missing must be one of {MISSING_IMAGES}, got {missing!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    items = list(range(len(paths))) if items is None else list(items)
    if len(items) != len(paths):
        raise ValueError(f"got {len(paths)} paths but {len(items)} items")
    absent = _absent_images(paths, items)
    if absent:
        pairs = [(items[i], paths[i]) for i in absent]
        if missing == "error" or len(absent) == len(paths):
            hint = "; pass missing='zeros' to give them zero rows" if len(absent) < len(paths) else ""
            raise FileNotFoundError(f"{len(absent)} of {len(paths)} items have no image file, {_examples(pairs)}{hint}")
        log.warning("%d of %d items have no image file; their embeddings are zero (%s)", len(absent), len(paths),
                    _examples(pairs))
    skip = set(absent)
    present = [i for i in range(len(paths)) if i not in skip]

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    processor, model = load_vision_encoder(encoder, device=device)
    dtype = next(model.parameters()).dtype
    out: Tensor | None = None
    for start in tqdm(range(0, len(present), batch_size), desc="embedding images", unit="batch", disable=not progress):
        rows = present[start : start + batch_size]
        images = [load_image(paths[i], item=items[i]) for i in rows]  # type: ignore[arg-type]
        pixel_values = processor(images=images, return_tensors="pt")["pixel_values"].to(device, dtype)
        features, how = pool_image_features(model, pixel_values)
        if out is None:
            log.info("image embeddings of %s: %s, width %d", encoder, how, features.shape[1])
            out = torch.zeros(len(paths), features.shape[1], dtype=torch.float32)
        out[rows] = features.float().cpu()
    assert out is not None  # at least one image is present (checked above)
    return out


def item_image_paths(dataset: str | Path, image_dir: str | Path, pattern: str = DEFAULT_PATTERN) -> list[Path]:
    """The image file of each dense item: ``image_dir / pattern.format(item_id=<dataset item id>)``."""
    if "{item_id}" not in pattern:
        raise ValueError(f"pattern {pattern!r} must contain '{{item_id}}', e.g. '{DEFAULT_PATTERN}'")
    root = Path(image_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"image_dir {str(image_dir)!r} is not a folder")
    return [root / pattern.format(item_id=item) for item in load_dataset(dataset).item_ids]


def _fingerprint(path: Path) -> list:
    """(path, size, mtime) of a file, or of every file directly in a folder; [path, None] when absent."""
    if path.is_dir():
        return [_fingerprint(p) for p in sorted(path.iterdir()) if p.is_file()]
    if not path.is_file():
        return [str(path), None]
    stat = path.stat()
    return [str(path), stat.st_size, stat.st_mtime_ns]


def _cache_key(encoder: str, paths: list[Path], missing: str) -> str:
    h = hashlib.sha256()
    # A local encoder folder is keyed by its files too, so re-saved weights are never served from a stale entry.
    local = Path(encoder).expanduser()
    encoder_key = _fingerprint(local.resolve()) if local.is_dir() else encoder
    h.update(json.dumps({"encoder": encoder, "files": encoder_key, "missing": missing}).encode())
    for path in paths:
        h.update(json.dumps(_fingerprint(path.resolve())).encode())
        h.update(b"\0")
    return h.hexdigest()


def dataset_image_embeddings(
    dataset: str | Path,
    *,
    encoder: str,
    image_dir: str | Path,
    pattern: str = DEFAULT_PATTERN,
    missing: MissingImages = "error",
    batch_size: int = 64,
    device: str | None = None,
    cache_dir: str | Path | None = None,
) -> Tensor:
    """Image embedding of every item of a dataset (:func:`image_embeddings`), computed once and cached.

    The cache entry is keyed by the encoder (and a local encoder folder's files), the ``missing`` policy and every
    image file's path, size and modification time, so a replaced, added or removed image is never served stale.

    Args:
        dataset: bundled name or path; its item ids (``SequenceDataset.item_ids``) name the files.
        image_dir: the folder of images.
        pattern: file name of an item's image under ``image_dir``, formatted with ``item_id``.
        cache_dir: cache root (see ``genrec.features.cache.cache_root``).
        encoder, missing, batch_size, device: as for :func:`image_embeddings`.

    Returns:
        (n_items, d) float32, row i = dense item index i.
    """
    ds = load_dataset(dataset)
    paths = item_image_paths(dataset, image_dir, pattern)
    key = _cache_key(encoder, paths, missing)
    path = cache_path("image-embeddings", dataset=dataset_name(dataset), tag=encoder_slug(encoder), key=key,
                      cache_dir=cache_dir)
    cached = load_cached(path)
    if cached is not None:
        log.info("image embeddings from cache %s", path)
        return cached
    start = time.perf_counter()
    vectors = image_embeddings(paths, encoder=encoder, batch_size=batch_size, device=device, items=ds.item_ids,
                               missing=missing)
    save_cached(
        path,
        vectors,
        {"dataset": str(dataset), "encoder": encoder, "image_dir": str(image_dir), "pattern": pattern,
         "missing": missing, "items": len(paths), "dim": int(vectors.shape[1]),
         "items_without_image": int((vectors == 0).all(dim=1).sum()),
         "seconds": round(time.perf_counter() - start, 2)},
    )
    log.info("cached image embeddings at %s", path)
    return vectors


@dataclass
class ImageEmbeddings(FeatureSource):
    """Vision-encoder embeddings of each item's image (:func:`dataset_image_embeddings`), e.g. for MSCGRec's
    image semantic IDs or as a second source beside text."""

    encoder: str
    """HF vision encoder name or local folder, e.g. ``openai/clip-vit-base-patch32`` or ``facebook/dinov2-small``."""
    image_dir: str
    """Folder of item images."""
    pattern: str = DEFAULT_PATTERN
    """File name of an item's image under ``image_dir``, formatted with the dataset's ``item_id``."""
    missing: MissingImages = "error"
    """Items without an image file: ``"error"`` or ``"zeros"`` (a zero row, logged)."""
    batch_size: int = 64
    """Images per forward pass."""
    cache_dir: str | None = None
    """Embedding cache folder; None for the library default."""
    normalize: Normalization = "l2"
    """Per-source normalisation (``genrec.features.source``)."""
    weight: float = 1.0
    """Multiplier after normalisation."""

    def __post_init__(self) -> None:
        self._check()
        if self.missing not in MISSING_IMAGES:
            raise ValueError(f"ImageEmbeddings.missing must be one of {MISSING_IMAGES}, got {self.missing!r}")
        if "{item_id}" not in self.pattern:
            raise ValueError(f"ImageEmbeddings.pattern {self.pattern!r} must contain '{{item_id}}'")

    def load(self, dataset: str | Path) -> Tensor:
        return dataset_image_embeddings(
            dataset,
            encoder=self.encoder,
            image_dir=self.image_dir,
            pattern=self.pattern,
            missing=self.missing,
            batch_size=self.batch_size,
            cache_dir=self.cache_dir,
        )
