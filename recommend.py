"""Top-K recommendations from a trained generative recommender: constrained beam search (the T5 systems) or
exact scoring of the whole catalogue (the parallel-ID model).

Input, either
  * JSON lines ``{"user": ..., "history": [dataset item ids, oldest first]}`` from ``--input FILE`` or stdin
    (``--input -``, the default without ``--users``); or
  * ``--users 12,40`` / ``--users all``: dataset users, each with their *full* sequence as history, so the answer is
    the item after their last one; ``--holdout 1`` drops the last item first (the leave-one-out test history, whose
    answer is the held-out item).

Output: one JSON line per user, in input order, to stdout or ``--output FILE``:
``{"user": ..., "items": [top-K dataset item ids], "scores": [log-probabilities], "titles": [...]}`` (titles where the
dataset has item text), or ``{"user": ..., "line": n, "error": "..."}`` for a user with nothing to recommend from
(an empty history, only unknown items, a malformed line). Unknown item ids are skipped with a warning on stderr.
Histories longer than the model's ``max_len`` keep their most recent items.

The checkpoint carries the catalogue's semantic IDs; the dataset it was trained on (recorded in the checkpoint,
``--dataset`` overrides) maps item indices to ids and titles. Example::

    python recommend.py --checkpoint runs/tiger-beauty/checkpoints/last.ckpt --users all --holdout 1 --top-k 10
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from contextlib import ExitStack
from pathlib import Path

log = logging.getLogger("recommend")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--checkpoint", required=True,
                   help="Lightning checkpoint of a GenerativeRecommender or a ParallelIdRecommender")
    p.add_argument("--dataset", help="dataset name or path (default: the one recorded in the checkpoint)")
    p.add_argument("--max-len", type=int, help="history length in items (default: the one recorded in the checkpoint)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--input", help="JSON-lines file of histories, '-' for stdin (the default)")
    source.add_argument("--users", help="dataset user ids, comma-separated, or 'all': their full sequences as history")
    p.add_argument("--holdout", type=int, default=0, help="with --users: drop each user's last N items first (1: test)")
    p.add_argument("--output", help="JSON-lines output file (default: stdout)")
    p.add_argument("--top-k", type=int, default=10, help="items per user (default: 10)")
    p.add_argument("--beam-width", type=int, help="beams kept per level, T5 systems (default: max(20, top-k))")
    p.add_argument("--batch-size", type=int, default=256, help="users per beam search (default: 256)")
    p.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    args = p.parse_args(argv)
    args.beam_width = max(20, args.top_k) if args.beam_width is None else args.beam_width
    if args.top_k < 1 or args.batch_size < 1 or args.holdout < 0:
        p.error("--top-k and --batch-size must be >= 1 and --holdout >= 0")
    if args.beam_width < args.top_k:
        p.error(f"--beam-width ({args.beam_width}) must be >= --top-k ({args.top_k})")
    if args.holdout and args.users is None:
        p.error("--holdout applies to --users only (JSON histories are used as given)")
    return args


def _count_lines(path: str) -> int | None:
    """Lines of a regular file (for the progress bar's total); None for stdin and pipes."""
    if path == "-" or not Path(path).is_file():
        return None
    with open(path, "rb") as f:
        return sum(1 for _ in f)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s", stream=sys.stderr)
    # Imported after argument parsing so that --help is instant.
    import torch
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    from genrec.seq2seq.inference import Recommender

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        recommender = Recommender.load(args.checkpoint, dataset=args.dataset, max_len=args.max_len, device=device)
    except (FileNotFoundError, ValueError) as e:
        print(f"recommend.py: error: {e}", file=sys.stderr)
        return 2

    with ExitStack() as stack:
        if args.users is not None:
            users = None if args.users.strip() == "all" else [u.strip() for u in args.users.split(",") if u.strip()]
            total = recommender.dataset.n_users if users is None else len(users)
            requests = recommender.dataset_requests(users, holdout=args.holdout)
        else:
            path = args.input or "-"
            source = "<stdin>" if path == "-" else path
            try:
                # Bytes: each line is decoded on its own, so one that is not UTF-8 becomes its own error line.
                lines = sys.stdin.buffer if path == "-" else stack.enter_context(open(path, "rb"))
            except OSError as e:
                print(f"recommend.py: error: cannot read --input {path}: {e}", file=sys.stderr)
                return 2
            total = _count_lines(path)
            parsed = (recommender.parse_line(text, number, source) for number, text in enumerate(lines, start=1))
            requests = (r for r in parsed if r is not None)
        out = sys.stdout if args.output is None else stack.enter_context(open(args.output, "w", encoding="utf-8"))
        # The bar appears only for runs longer than a second or two: large inputs, not the quick ones.
        bar = stack.enter_context(
            tqdm(total=total, unit="user", file=sys.stderr, delay=1.5, disable=args.no_progress, dynamic_ncols=True)
        )
        stack.enter_context(logging_redirect_tqdm())
        start, n_users, n_errors = time.perf_counter(), 0, 0
        for line in recommender.run(requests, top_k=args.top_k, beam_width=args.beam_width, batch_size=args.batch_size):
            out.write(json.dumps(line, allow_nan=False) + "\n")
            n_users += 1
            n_errors += "error" in line
            bar.update(1)
        out.flush()
    elapsed = time.perf_counter() - start
    hashed = recommender.hashed_users
    hashed = f", {hashed} users outside the dataset (hashed user token)" if hashed else ""
    print(
        f"recommend.py: {n_users} users, {n_errors} errors{hashed}, {n_users / max(elapsed, 1e-9):.1f} users/s "
        f"on {recommender.device}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
