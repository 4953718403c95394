"""``python -m genrec.baselines CKPT OUT``: export a SASRec checkpoint's item embeddings as an (n_items, d) .npy."""

from __future__ import annotations

import argparse
import logging


def main(args: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m genrec.baselines", description=__doc__)
    parser.add_argument("ckpt_path", help="SASRec checkpoint (.ckpt)")
    parser.add_argument("out_path", help="output .npy; row i is dense item i")
    parsed = parser.parse_args(args)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from genrec.baselines.sasrec import export_item_embeddings

    export_item_embeddings(parsed.ckpt_path, parsed.out_path)


if __name__ == "__main__":
    main()
