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

Sharded: any of ``--devices``, ``--num-nodes``, ``--accelerator``, ``--strategy`` runs the requests through
Lightning's predict loop (:mod:`genrec.seq2seq.predict`), one process per device, each answering its share and
writing a shard beside ``--output``, which rank 0 then merges into the same output as one process writes. It needs
``--output`` and ``--users`` or an ``--input`` file (every process reads it; stdin cannot be shared). Example,
4 GPUs on one machine (Lightning starts the other 3 processes by running this command again)::

    python recommend.py --checkpoint last.ckpt --users all --holdout 1 --output recs.jsonl --devices 4
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from genrec.seq2seq.inference import Recommender

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
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    shard = p.add_argument_group(
        "sharded across processes",
        "any of these runs Lightning's predict loop (needs --output, and --users or an --input file)",
    )
    shard.add_argument("--devices", help="devices per node: a count, indices like 0,1, or auto (default: auto)")
    shard.add_argument("--num-nodes", type=int, help="machines (default: 1)")
    shard.add_argument("--accelerator", help="cpu, gpu, ... (default: auto)")
    shard.add_argument("--strategy", help="Lightning strategy (default: auto, which is ddp for more than one device)")
    args = p.parse_args(argv)
    args.beam_width = max(20, args.top_k) if args.beam_width is None else args.beam_width
    if args.top_k < 1 or args.batch_size < 1 or args.holdout < 0:
        p.error("--top-k and --batch-size must be >= 1 and --holdout >= 0")
    if args.beam_width < args.top_k:
        p.error(f"--beam-width ({args.beam_width}) must be >= --top-k ({args.top_k})")
    if args.holdout and args.users is None:
        p.error("--holdout applies to --users only (JSON histories are used as given)")
    args.sharded = any(v is not None for v in (args.devices, args.num_nodes, args.accelerator, args.strategy))
    if args.sharded:
        if args.device is not None:
            p.error("--device is for one process; a sharded run picks its devices by --accelerator and --devices")
        if args.output is None:
            p.error("sharded runs need --output (the shards are written beside it, then merged into it)")
        if args.users is None and args.input in (None, "-"):
            p.error("sharded runs read --users or an --input file: every process reads the input, so stdin cannot be "
                    "shared")
        if args.num_nodes is not None and args.num_nodes < 1:
            p.error(f"--num-nodes must be >= 1, got {args.num_nodes}")
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

    # Sharded: loaded on the CPU; the strategy moves each process's copy to its device.
    device = "cpu" if args.sharded else args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        recommender = Recommender.load(args.checkpoint, dataset=args.dataset, max_len=args.max_len, device=device)
    except (FileNotFoundError, ValueError) as e:
        print(f"recommend.py: error: {e}", file=sys.stderr)
        return 2
    users = None
    if args.users is not None and args.users.strip() != "all":
        users = [u.strip() for u in args.users.split(",") if u.strip()]
    if args.sharded:
        return _sharded(args, recommender, users)

    with ExitStack() as stack:
        if args.users is not None:
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


def _sharded(args: argparse.Namespace, recommender: Recommender, users: list[str] | None) -> int:
    """The run through Lightning's predict loop: every process runs this, rank 0 merges and prints the summary."""
    import warnings

    import lightning.pytorch as pl

    from genrec.cli import quiet_third_party
    from genrec.provenance import device_name
    from genrec.seq2seq.predict import BatchRecommender, PositionedRequests, RequestData, ShardWriter

    if args.users is not None:
        requests = PositionedRequests.of_users(recommender, users, holdout=args.holdout)
    else:
        try:
            requests = PositionedRequests.of_file(recommender, args.input)
        except OSError as e:
            print(f"recommend.py: error: cannot read --input {args.input}: {e}", file=sys.stderr)
            return 2
    # Lightning's notices (devices found, each rank's distributed set-up) would print on every run; warnings show.
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    quiet_third_party()
    # The writer reads each request's position from the batch itself, not from Lightning's batch indices.
    warnings.filterwarnings("ignore", message="Couldn't infer the batch indices fetched from your dataloader")
    writer = ShardWriter(args.output, total=len(requests))
    trainer = pl.Trainer(
        accelerator=args.accelerator or "auto", devices=args.devices or "auto", num_nodes=args.num_nodes or 1,
        strategy=args.strategy or "auto", callbacks=[writer], logger=False, enable_checkpointing=False,
        enable_model_summary=False, enable_progress_bar=not args.no_progress,
    )
    start = time.perf_counter()
    trainer.predict(
        BatchRecommender(recommender, top_k=args.top_k, beam_width=args.beam_width),
        datamodule=RequestData(requests, batch_size=args.batch_size),
        return_predictions=False,
    )
    if not trainer.is_global_zero:
        return 0
    elapsed = time.perf_counter() - start
    summary, hashed = writer.summary, writer.hashed_users
    hashed = f", {hashed} users outside the dataset (hashed user token)" if hashed else ""
    where = device_name(trainer.strategy.root_device, world_size=trainer.world_size)
    print(
        f"recommend.py: {summary.users} users, {summary.errors} errors{hashed}, "
        f"{summary.users / max(elapsed, 1e-9):.1f} users/s on {where}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
