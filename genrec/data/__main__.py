"""``python -m genrec.data stats <dataset>``: dataset statistics (item features: ``python -m genrec.features``)."""

from __future__ import annotations

import argparse
import json
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m genrec.data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    stats = sub.add_parser("stats", help="print one JSON object of dataset statistics")
    stats.add_argument("dataset", help="bundled name (amazon-beauty, amazon-sports) or a path")
    stats.add_argument("--k-core", type=int, default=None, help="keep users/items with >= k interactions")
    stats.add_argument("--max-len", type=int, default=20, help="history length of the leave-one-out split")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from genrec.data import DataFormatError, leave_one_out, load_dataset

    try:
        ds = load_dataset(args.dataset, k_core_min=args.k_core)
        split = leave_one_out(ds, max_len=args.max_len)
        out = ds.stats()
        out.update(train_samples=len(split.train), valid_samples=len(split.valid), test_samples=len(split.test))
        print(json.dumps(out))
    except (DataFormatError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
