"""Constrained beam search: genrec's engine vs HF ``generate``, side by side on the same model and inputs.

Purpose: issue #5 target, >= 10x the users/s of HF constrained ``generate`` at batch 256 on CPU, 0 invalid IDs.
Setup: TIGER-size T5 with random weights (d_model 128, 4+4 layers, 6 heads x 64, d_ff 1024), a synthetic
catalogue of 12,101 items with 3 x 256 codes + a collision level, histories of 20 items x 4 codes.

Compared, on identical inputs in one run:
    engine          genrec.seq2seq.t5_step.t5_beam_search (shared cross-attention K/V, dense prefix tables)
    hf_constrained  model.generate(num_beams=B, prefix_allowed_tokens_fn=<trie over the catalogue>)
    hf_free         model.generate(num_beams=B) without constraints (its invalid rate is why constraints exist)

Command (CPU, default batch sizes 1,64,256):
    PYTHONPATH=. python benchmarks/beam_search.py
GPU:
    PYTHONPATH=. python benchmarks/beam_search.py --device cuda   # batch sizes 1,64,256,1024,4096

HF generate is slow at large batches on CPU, so it runs at most ``--hf-max-users`` users per batch size (at least
one batch); the engine always runs ``--repeats`` batches. The methods are timed interleaved, batch by batch, so
that other load on the machine hits them alike. Prints a markdown table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from collections import defaultdict

import numpy as np
import torch
from transformers import T5ForConditionalGeneration

from genrec.decoding import PrefixIndex
from genrec.seq2seq.module import T5Architecture, build_t5
from genrec.seq2seq.t5_step import t5_beam_search
from genrec.seq2seq.vocab import EOS_ID, CodeVocab


def make_catalogue(n_items: int, levels: int, size: int, seed: int) -> torch.Tensor:
    """Random (n_items, levels + 1) codes; the last level numbers items sharing a prefix (TIGER §3.1)."""
    g = torch.Generator().manual_seed(seed)
    sem = torch.randint(0, size, (n_items, levels), generator=g)
    key = sem @ (size ** torch.arange(levels - 1, -1, -1))
    order = torch.argsort(key, stable=True)
    sorted_key = key[order]
    group_start = torch.ones(n_items, dtype=torch.bool)
    group_start[1:] = sorted_key[1:] != sorted_key[:-1]
    start_pos = torch.cummax(torch.where(group_start, torch.arange(n_items), 0), 0).values
    collision = torch.empty(n_items, dtype=torch.long)
    collision[order] = torch.arange(n_items) - start_pos
    return torch.cat([sem, collision[:, None]], dim=1)


def make_model(vocab: CodeVocab, seed: int) -> T5ForConditionalGeneration:
    """The TIGER-size model genrec trains (configs/tiger/beauty.yaml), with random weights and no dropout."""
    torch.manual_seed(seed)
    return build_t5(vocab, T5Architecture(dropout=0.0)).eval()


def build_trie(tokens: torch.Tensor) -> dict[tuple[int, ...], list[int]]:
    """Allowed next tokens after every prefix of the catalogue's token paths (the usual HF recipe)."""
    trie: dict[tuple[int, ...], set[int]] = defaultdict(set)
    for path in tokens.tolist():
        for level in range(len(path)):
            trie[tuple(path[:level])].add(path[level])
    return {prefix: sorted(nxt) for prefix, nxt in trie.items()}


def invalid_rate(sequences: torch.Tensor, vocab: CodeVocab, item_of: dict[tuple[int, ...], int]) -> float:
    """Fraction of generated sequences (start token stripped) that are not exactly a catalogue item's tokens."""
    paths = sequences[:, 1 : 1 + vocab.levels].tolist()
    return sum(tuple(p) not in item_of for p in paths) / max(1, len(paths))


def timed(fn, sync) -> tuple[float, object]:
    sync()
    start = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-sizes", default=None, help="comma-separated; default 1,64,256 (cpu) or up to 4096")
    parser.add_argument("--repeats", type=int, default=5, help="timed batches per batch size for the engine")
    parser.add_argument("--hf-max-users", type=int, default=256, help="users timed per batch size for HF")
    parser.add_argument("--beam", type=int, default=20)
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--n-items", type=int, default=12101)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    device = torch.device(args.device)
    default_sizes = "1,64,256" if device.type == "cpu" else "1,64,256,1024,4096"
    batch_sizes = [int(x) for x in (args.batch_sizes or default_sizes).split(",")]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    codes = make_catalogue(args.n_items, levels=3, size=256, seed=args.seed)
    vocab = CodeVocab(level_sizes=(256, 256, 256, int(codes[:, -1].max()) + 1))
    model = make_model(vocab, seed=args.seed).to(device)
    index = PrefixIndex(codes, vocab.level_sizes).to(device)
    tokens = vocab.encode(codes)
    trie = build_trie(tokens)
    item_of = {tuple(p): i for i, p in enumerate(tokens.tolist())}
    g = torch.Generator().manual_seed(args.seed + 1)
    history = vocab.encode(codes[torch.randint(0, len(codes), (max(batch_sizes), 20), generator=g)])
    all_ids = history.flatten(1).to(device)  # (b, 80)
    all_mask = torch.ones_like(all_ids)

    def allowed(batch_id: int, sent: torch.Tensor) -> list[int]:
        return trie.get(tuple(sent[1:].tolist()), [EOS_ID])

    def run(method: str, ids: torch.Tensor, mask: torch.Tensor):
        if method == "engine":
            return t5_beam_search(model, ids, mask, index, vocab, beam_width=args.beam, top_k=args.top_k)
        return model.generate(
            input_ids=ids,
            attention_mask=mask,
            num_beams=args.beam,
            num_return_sequences=args.top_k,
            max_new_tokens=vocab.levels,
            do_sample=False,
            prefix_allowed_tokens_fn=allowed if method == "hf_constrained" else None,
        )

    methods = ["engine", "hf_constrained", "hf_free"]
    with torch.inference_mode():
        for method in methods:  # warm-up: first-call allocations, lazy imports, kernels
            run(method, all_ids[:2], all_mask[:2])

        rows = []
        for bs in batch_sizes:
            ids, mask = all_ids[:bs], all_mask[:bs]
            result = {"batch": bs}
            outputs, times = {}, {m: [] for m in methods}
            hf_batches = max(1, min(args.repeats, args.hf_max_users // bs))
            counts = {m: args.repeats if m == "engine" else hf_batches for m in methods}
            # Interleave the methods so that load from other processes hits them alike (a shared machine drifts).
            for r in range(max(counts.values())):
                for method in methods:
                    if r < counts[method]:
                        dt, outputs[method] = timed(lambda: run(method, ids, mask), sync)
                        times[method].append(dt)
            for method in methods:
                n, t = counts[method], times[method]
                result[method] = {
                    "users_per_s": bs * n / sum(t),
                    "p50_ms": 1e3 * float(np.percentile(t, 50)),
                    "p90_ms": 1e3 * float(np.percentile(t, 90)),
                    "batches": n,
                }
            engine = outputs["engine"]
            start = torch.zeros(bs * args.top_k, 1, dtype=torch.long, device=device)
            engine_seqs = torch.cat([start, vocab.encode(engine.codes.clamp(min=0)).flatten(0, 1)], dim=1)
            engine_seqs[(engine.items < 0).flatten()] = EOS_ID  # -1 fill counts as invalid
            result["engine"]["invalid"] = invalid_rate(engine_seqs, vocab, item_of)
            for method in ("hf_constrained", "hf_free"):
                result[method]["invalid"] = invalid_rate(outputs[method], vocab, item_of)
            # Same top-K item set as HF constrained beam search, per user (a correctness cross-check).
            hf_items = [
                item_of.get(tuple(p), -1) for p in outputs["hf_constrained"][:, 1 : 1 + vocab.levels].tolist()
            ]
            hf_sets = [set(hf_items[u * args.top_k : (u + 1) * args.top_k]) for u in range(bs)]
            same = sum(set(r) == s for r, s in zip(engine.items.tolist(), hf_sets))
            result["same_topk_as_hf_constrained"] = same / bs
            result["speedup_vs_hf_constrained"] = (
                result["engine"]["users_per_s"] / result["hf_constrained"]["users_per_s"]
            )
            result["speedup_vs_hf_free"] = result["engine"]["users_per_s"] / result["hf_free"]["users_per_s"]
            rows.append(result)
            print(f"batch {bs} done", flush=True)

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = "unknown"
    header = {
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "commit": commit,
        "date": time.strftime("%Y-%m-%d"),
        "beam": args.beam,
        "top_k": args.top_k,
        "n_items": len(codes),
        "level_sizes": list(vocab.level_sizes),
    }
    print()
    print(" | ".join(f"{k}={v}" for k, v in header.items()))
    print()
    print("| batch | method | users/s | p50 ms | p90 ms | batches timed | invalid | speed-up of engine |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        for method in methods:
            m = r[method]
            ratio = {"engine": "1.0x", "hf_constrained": f"{r['speedup_vs_hf_constrained']:.1f}x"}.get(
                method, f"{r['speedup_vs_hf_free']:.1f}x"
            )
            print(
                f"| {r['batch']} | {method} | {m['users_per_s']:.1f} | {m['p50_ms']:.1f} | {m['p90_ms']:.1f} "
                f"| {m['batches']} | {100 * m['invalid']:.1f}% | {ratio} |"
            )
    print()
    print("same top-K set as HF constrained: " + ", ".join(
        f"batch {r['batch']}: {100 * r['same_topk_as_hf_constrained']:.0f}%" for r in rows
    ))
    print(json.dumps({**header, "results": rows}))


if __name__ == "__main__":
    main()
