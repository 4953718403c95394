"""Quality gate of the bf16 decoding path: top-K overlap with fp32 on a trained checkpoint and real histories.

Decodes the same leave-one-out test histories in fp32 and under bf16 autocast, in two ways: plain autocast (the
logits are rounded to bf16) and autocast with the output projection in fp32 (``fp32_head``, the fix: log-softmax
and scores are fp32 in both). For each it reports the mean fraction of each user's fp32 top-K that the bf16
top-K also holds, its minimum, the fraction of users with identical lists, the largest score difference at equal
rank, the decoding seconds, and whether the gate (mean overlap >= 99 %) passes. With ``--hf-users N`` it also
measures how many of HF's *unconstrained* beam-search results are not catalogue items on this trained model (the
figure constrained decoding exists for). Prints one JSON line (``--json PATH`` writes it there too).

    python benchmarks/bf16_overlap.py --checkpoint runs/.../best-epoch=3.ckpt [--users 2048] [--hf-users 256]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

GATE = 0.99
VARIANTS = {"bf16": False, "bf16-fp32head": True}  # name -> fp32_head


def overlap_gate(checkpoint: str, *, users: int, batch_size: int, device: torch.device, hf_users: int = 0) -> dict:
    """The gate's figures for one checkpoint (module docstring)."""
    from genrec.provenance import provenance
    from genrec.seq2seq.data import SemanticIdData
    from genrec.seq2seq.module import GenerativeRecommender
    from genrec.seq2seq.t5_step import t5_beam_search

    hparams = torch.load(checkpoint, map_location="cpu", weights_only=True)["datamodule_hyper_parameters"]
    data = SemanticIdData(**{k: v for k, v in hparams.items() if not k.startswith("_")})
    data.setup("test")
    model = GenerativeRecommender.load_from_checkpoint(checkpoint, map_location=device, weights_only=True).eval()
    model.index = model.index.to(device)
    test = data.parts["test"]
    rows = list(range(min(users, len(test))))
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    shared = {name: [] for name in VARIANTS}
    identical = dict.fromkeys(VARIANTS, 0)
    max_diff = dict.fromkeys(VARIANTS, 0.0)
    seconds = dict.fromkeys(["fp32", *VARIANTS], 0.0)
    args = dict(beam_width=model.hparams.beam_width, top_k=model.hparams.top_k)
    for start in range(0, len(rows), batch_size):
        batch = test[rows[start : start + batch_size]]
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        outs = {}
        for name in seconds:
            sync()
            t = time.perf_counter()
            amp = None if name == "fp32" else torch.bfloat16
            outs[name] = t5_beam_search(model.model, ids, mask, model.index, model.vocab, amp_dtype=amp,
                                        fp32_head=VARIANTS.get(name, True), **args)
            sync()
            seconds[name] += time.perf_counter() - t
        reference = outs["fp32"]
        for name in VARIANTS:
            a, b = reference.items, outs[name].items
            shared[name].append((a.unsqueeze(2) == b.unsqueeze(1)).any(2).float().mean(1))  # (b,) fp32 top-K kept
            identical[name] += int((a == b).all(1).sum())
            max_diff[name] = max(max_diff[name], float((reference.scores - outs[name].scores).abs().max()))
    result = {**provenance(device), "checkpoint": str(checkpoint), "users": len(rows), "top_k": args["top_k"],
              "gate": GATE, "seconds_fp32": round(seconds["fp32"], 2), "variants": {}}
    for name in VARIANTS:
        overlap = torch.cat(shared[name])
        result["variants"][name] = {
            "fp32_head": VARIANTS[name],
            "mean_topk_overlap": round(float(overlap.mean()), 4),
            "min_topk_overlap": round(float(overlap.min()), 4),
            "identical_lists": round(identical[name] / len(overlap), 4),
            "max_abs_score_diff_same_rank": round(max_diff[name], 4),
            "seconds": round(seconds[name], 2),
            "passes": bool(overlap.mean() >= GATE),
        }
    if hf_users:
        result["hf_unconstrained_invalid"] = hf_invalid_rate(model, test, users=hf_users, device=device)
    return result


def hf_invalid_rate(model, test, *, users: int, device: torch.device) -> float:
    """Fraction of HF unconstrained beam search's top-K on ``users`` test users that are not catalogue items."""
    from beam_search import hf_generate, invalid_rate

    tokens = model.vocab.encode(model.item_codes)
    item_of = {tuple(p): i for i, p in enumerate(tokens.tolist())}
    batch = test[list(range(min(users, len(test))))]
    with torch.inference_mode():
        out = hf_generate(model.model, batch["input_ids"].to(device), batch["attention_mask"].to(device),
                          vocab=model.vocab, trie=None, beam=model.hparams.beam_width, top_k=model.hparams.top_k)
    return round(invalid_rate(out, model.vocab, item_of), 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--users", type=int, default=2048, help="test users decoded (the first N)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--hf-users", type=int, default=0, help="test users for HF's unconstrained invalid rate")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", default=None, help="also write the result here")
    args = parser.parse_args()
    if not Path(args.checkpoint).is_file():
        raise SystemExit(f"--checkpoint {args.checkpoint}: no such file")
    if args.users < 1 or args.batch_size < 1 or args.hf_users < 0:
        raise SystemExit("--users and --batch-size must be >= 1, --hf-users >= 0")
    result = overlap_gate(args.checkpoint, users=args.users, batch_size=args.batch_size,
                          device=torch.device(args.device), hf_users=args.hf_users)
    line = json.dumps(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(line)


if __name__ == "__main__":
    main()
