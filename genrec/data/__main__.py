"""``python -m genrec.data stats|embed <dataset>``: dataset statistics and cached item text embeddings."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m genrec.data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    stats = sub.add_parser("stats", help="print one JSON object of dataset statistics")
    stats.add_argument("dataset", help="bundled name (amazon-beauty, amazon-sports) or a path")
    stats.add_argument("--k-core", type=int, default=None, help="keep users/items with >= k interactions")
    stats.add_argument("--max-len", type=int, default=20, help="history length of the leave-one-out split")
    embed = sub.add_parser("embed", help="compute (or load from cache) the item text embeddings")
    embed.add_argument("dataset")
    embed.add_argument("--encoder", default=None, help="HF model name or path (default all-MiniLM-L6-v2, offline)")
    embed.add_argument("--template", default=None, help="text template over item fields")
    embed.add_argument("--batch-size", type=int, default=256)
    embed.add_argument("--missing-text", choices=["error", "empty"], default="error")
    embed.add_argument("--cache-dir", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from genrec.data import DataFormatError, leave_one_out, load_dataset

    try:
        if args.command == "stats":
            ds = load_dataset(args.dataset, k_core_min=args.k_core)
            split = leave_one_out(ds, max_len=args.max_len)
            out = ds.stats()
            out.update(train_samples=len(split.train), valid_samples=len(split.valid), test_samples=len(split.test))
            print(json.dumps(out))
        else:
            from genrec.data.embeddings import text_embeddings

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


if __name__ == "__main__":
    sys.exit(main())
