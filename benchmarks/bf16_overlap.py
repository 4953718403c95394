"""Quality gate of the bf16 decoding path: top-K overlap with fp32 on a trained checkpoint and real histories.

Decodes the same leave-one-out test histories twice, in fp32 and under bf16 autocast, and reports the mean fraction
of each user's fp32 top-K that the bf16 top-K also holds, the fraction of users with identical lists, and the
largest score difference. Prints one JSON line.

    python benchmarks/bf16_overlap.py --checkpoint runs/.../best-epoch=3.ckpt [--users 2048]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--users", type=int, default=2048, help="test users decoded (the first N)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    from genrec.seq2seq.data import SemanticIdData
    from genrec.seq2seq.module import GenerativeRecommender
    from genrec.seq2seq.t5_step import t5_beam_search

    checkpoint = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    hparams = {k: v for k, v in checkpoint["datamodule_hyper_parameters"].items() if not k.startswith("_")}
    data = SemanticIdData(**hparams)
    data.setup("test")
    device = torch.device(args.device)
    model = GenerativeRecommender.load_from_checkpoint(args.checkpoint, map_location=device).eval()
    model.index = model.index.to(device)
    test = data.parts["test"]
    rows = list(range(min(args.users, len(test))))
    overlap, identical, max_diff, seconds = [], 0, 0.0, {"fp32": 0.0, "bf16": 0.0}
    for start in range(0, len(rows), args.batch_size):
        batch = test[rows[start : start + args.batch_size]]
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        outs = {}
        for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
            t = time.perf_counter()
            outs[name] = t5_beam_search(model.model, ids, mask, model.index, model.vocab,
                                        beam_width=model.hparams.beam_width, top_k=model.hparams.top_k, amp_dtype=dtype)
            seconds[name] += time.perf_counter() - t
        a, b = outs["fp32"].items, outs["bf16"].items
        shared = (a.unsqueeze(2) == b.unsqueeze(1)).any(2).float().mean(1)  # (b,) fraction of fp32 top-K in bf16's
        overlap.append(shared)
        identical += int((a == b).all(1).sum())
        max_diff = max(max_diff, float((outs["fp32"].scores - outs["bf16"].scores).abs().max()))
    overlap = torch.cat(overlap)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(json.dumps({
        "checkpoint": args.checkpoint,
        "device": str(device),
        "commit": commit,
        "users": len(overlap),
        "top_k": model.hparams.top_k,
        "mean_topk_overlap": round(float(overlap.mean()), 4),
        "min_topk_overlap": round(float(overlap.min()), 4),
        "identical_lists": round(identical / len(overlap), 4),
        "max_abs_score_diff_same_rank": round(max_diff, 4),
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
    }))


if __name__ == "__main__":
    main()
