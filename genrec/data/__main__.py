"""``python -m genrec.data stats|inspect <dataset>``: dataset statistics as JSON, or what genrec reads from a
dataset before training (format, item fields, the text items are embedded with, counts).
``python -m genrec.data synth OUT --users U --items I --interactions N``: a synthetic dataset of any size
(:mod:`genrec.data.synth`). Item features: ``python -m genrec.features``."""

from __future__ import annotations

import argparse
import json
import logging
import sys


def _inspect(args: argparse.Namespace) -> None:
    """Prints what genrec reads from a dataset: its files and format, counts, item fields, item text."""
    from genrec.data import leave_one_out, load_dataset, resolve
    from genrec.data.dataset import data_files
    from genrec.data.text import ItemTextError, choose_template, field_summaries, item_texts

    ds = load_dataset(args.dataset, k_core_min=args.k_core)
    stats = ds.stats()
    split = leave_one_out(ds, max_len=args.max_len)
    print(f"dataset      {args.dataset}")
    print(f"format       {data_files(resolve(args.dataset)).describe()}")
    print(f"counts       {stats['users']:,} users, {stats['items']:,} items, {stats['interactions']:,} interactions; "
          f"{stats['min_seq_len']}-{stats['max_seq_len']} per user (mean {stats['avg_seq_len']:.1f}); "
          f"density {stats['density']:.4g}")
    print(f"split        leave-one-out, histories of {args.max_len}: {len(split.train):,} training samples, "
          f"{len(split.valid):,} validation, {len(split.test):,} test")
    dropped = {k: v for k, v in stats["dropped"].items() if v}
    print(f"dropped      {', '.join(f'{k} {v:,}' for k, v in dropped.items()) or 'nothing'}")
    if ds.items is None:
        print("item fields  none: no item file (items.jsonl or <name>.item), so no item text")
        return
    fields = field_summaries(ds)
    print(f"item fields  {len(fields)} in the item file (catalogue items with a value; examples):")
    width = max((len(f.name) for f in fields), default=0)
    for f in fields:
        examples = " | ".join(repr(e[:50]) for e in f.examples)
        print(f"  {f.name:<{width}}  {f.filled:>7,}  {examples}")
    try:
        choice = choose_template(ds, args.template)
    except ItemTextError as e:
        print(f"item text    none: {e}")
        return
    texts, empty = item_texts(ds, choice.template)
    print(f"item text    {choice.template!r} ({choice.how}); {len(empty):,} items without text")
    for index in range(min(args.items, ds.n_items)):
        print(f"  [{ds.item_ids[index]}] {texts[index][:100]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m genrec.data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    stats = sub.add_parser("stats", help="print one JSON object of dataset statistics")
    inspect = sub.add_parser("inspect", help="show the format, item fields, item text and counts genrec reads")
    for command in (stats, inspect):
        command.add_argument("dataset", help="bundled name (amazon-beauty, amazon-sports) or a path")
        command.add_argument("--k-core", type=int, default=None, help="keep users/items with >= k interactions")
        command.add_argument("--max-len", type=int, default=20, help="history length of the leave-one-out split")
    inspect.add_argument("--template", default=None, help="an item text template to try (default: genrec's choice)")
    inspect.add_argument("--items", type=int, default=5, help="items whose text is shown")
    synth = sub.add_parser("synth", help="write a synthetic dataset of any size (genrec.data.synth)")
    synth.add_argument("output", help="folder to write sequences.txt, items.jsonl, features.npy and synth.json to")
    synth.add_argument("--users", type=int, required=True, help="number of users")
    synth.add_argument("--items", type=int, required=True, help="catalogue size (items never drawn are left out)")
    synth.add_argument("--interactions", type=int, required=True, help="total interactions")
    synth.add_argument("--clusters", type=int, default=None, help="latent clusters (default: one per 50 items)")
    synth.add_argument("--alpha", type=float, default=0.8, help="popularity exponent: rank ** -alpha")
    synth.add_argument("--stay", type=float, default=0.5, help="probability of staying in a cluster per step")
    synth.add_argument("--dim", type=int, default=384, help="width of the item feature vectors")
    synth.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "synth":
        from genrec.data.synth import SynthSpec, write_synthetic

        try:
            spec = SynthSpec(users=args.users, items=args.items, interactions=args.interactions,
                             clusters=args.clusters, alpha=args.alpha, stay=args.stay, dim=args.dim, seed=args.seed)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(json.dumps(write_synthetic(spec, args.output)))
        return 0

    from genrec.data import DataFormatError, leave_one_out, load_dataset

    try:
        if args.command == "inspect":
            _inspect(args)
            return 0
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
