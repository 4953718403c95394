"""``python -m genrec.features embed|images <dataset>``: cached item text embeddings and item image embeddings."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m genrec.features", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    embed = sub.add_parser("embed", help="compute (or load from cache) the item text embeddings")
    embed.add_argument("dataset", help="bundled name (amazon-beauty, amazon-sports) or a path")
    embed.add_argument("--encoder", default=None, help="HF model name or path (default all-MiniLM-L6-v2, offline)")
    embed.add_argument("--template", default=None, help="text template over item fields")
    embed.add_argument("--batch-size", type=int, default=256)
    embed.add_argument("--missing-text", choices=["error", "empty"], default="error")
    embed.add_argument("--cache-dir", default=None)
    images = sub.add_parser("images", help="embed one image per item with a vision encoder and write them to .npy")
    images.add_argument("dataset")
    images.add_argument("--encoder", required=True, help="HF vision model name or local folder")
    images.add_argument("--image-dir", required=True, help="folder holding one image per item")
    images.add_argument("--pattern", default="{item_id}.jpg", help="an item's file name under --image-dir")
    images.add_argument("--missing", choices=["error", "zeros"], default="error", help="items without an image file")
    images.add_argument("--batch-size", type=int, default=64)
    images.add_argument("--device", default=None, help="default: cuda when available")
    images.add_argument("--cache-dir", default=None)
    images.add_argument(
        "--output", default=None, help="the .npy (row i = dense item i, for NpyFeatures); default "
        "runs/image-embeddings/<dataset>-<encoder>.npy"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from genrec.data import DataFormatError

    try:
        if args.command == "images":
            _images(args)
        else:
            from genrec.features.text import text_embeddings

            start = time.perf_counter()
            vectors = text_embeddings(
                args.dataset,
                encoder=args.encoder,
                template=args.template,
                batch_size=args.batch_size,
                missing_text=args.missing_text,
                cache_dir=args.cache_dir,
            )
            print(json.dumps({"dataset": args.dataset, "items": vectors.shape[0], "dim": vectors.shape[1],
                              "seconds": round(time.perf_counter() - start, 2)}))
    except (DataFormatError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def _images(args: argparse.Namespace) -> None:
    from pathlib import Path

    import numpy as np

    from genrec.data.dataset import dataset_name
    from genrec.features.cache import encoder_slug
    from genrec.features.image import dataset_image_embeddings

    out = Path(args.output or f"runs/image-embeddings/{dataset_name(args.dataset)}-{encoder_slug(args.encoder)}.npy")
    if out.suffix != ".npy":  # np.save would append .npy and the printed path would be wrong
        raise ValueError(f"--output {str(out)!r} must end in .npy")
    start = time.perf_counter()
    vectors = dataset_image_embeddings(
        args.dataset,
        encoder=args.encoder,
        image_dir=args.image_dir,
        pattern=args.pattern,
        missing=args.missing,
        batch_size=args.batch_size,
        device=args.device,
        cache_dir=args.cache_dir,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, vectors.numpy())
    print(json.dumps({"dataset": args.dataset, "items": vectors.shape[0], "dim": vectors.shape[1],
                      "zero_rows": int((vectors == 0).all(dim=1).sum()), "output": str(out),
                      "seconds": round(time.perf_counter() - start, 2)}))


if __name__ == "__main__":
    sys.exit(main())
