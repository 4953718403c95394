"""Constrained beam search: genrec's engine vs HF ``generate``, side by side on the same model and inputs.

Purpose: issue #5 target, >= 10x the users/s of HF constrained ``generate`` at batch 256 on CPU, 0 invalid IDs;
issue #13 (GPU): >= 20,000 users/s and >= 50x HF constrained at GPU batch sizes, in fp32 and bf16, with and
without torch.compile / CUDA graphs of the search.
Setup: TIGER-size T5 with random weights (d_model 128, 4+4 layers, 6 heads x 64, d_ff 1024), a catalogue of 12,101
items with 3 x 256 codes + a collision level (synthetic, or a tokenizer artifact's real IDs with ``--tokenizer``),
histories of 20 items x 4 codes, beam 20, top-20.

Compared, on identical inputs in one run:
    engine          genrec.seq2seq.t5_step (shared cross-attention K/V, dense prefix tables), in each --dtypes and
                    --modes: eager; graph (the whole search captured as one CUDA graph); compile / compile+graph
                    (torch.compile of the search, at --compile-batch only: compiling takes tens of seconds)
    hf_constrained  model.generate(num_beams=B, prefix_allowed_tokens_fn=<trie over the catalogue>)
    hf_free         model.generate(num_beams=B) without constraints (its invalid rate is why constraints exist)

dtypes: fp32; bf16 (plain autocast: the logits are bf16); bf16-fp32head (autocast with the output projection in
fp32, the fix measured by the bf16 gate). HF runs in fp32 and bf16.

Command (CPU, default batch sizes 1,64,256):
    PYTHONPATH=. python benchmarks/beam_search.py
GPU:
    PYTHONPATH=. python benchmarks/beam_search.py --device cuda --dtypes fp32,bf16,bf16-fp32head \
        --modes eager,graph,compile     # batch sizes 256,1024,4096

HF generate is slow at large batches, so it runs on the first ``--hf-max-users`` users of a batch (at least one
batch) and is measured once per HF batch size; the engine runs ``--repeats`` batches. The methods of a batch size
are timed interleaved, batch by batch, so that other load on the machine hits them alike. Prints a markdown table
and one JSON line; ``--json PATH`` also writes the rows there after every batch size.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from transformers import T5ForConditionalGeneration

from genrec.decoding import CudaGraph, PrefixIndex
from genrec.provenance import provenance
from genrec.seq2seq.module import T5Architecture, build_t5
from genrec.seq2seq.t5_step import t5_beam_search, t5_search_function
from genrec.seq2seq.vocab import EOS_ID, CodeVocab

DTYPES = ("fp32", "bf16", "bf16-fp32head")
MODES = ("eager", "graph", "compile", "compile+graph")
TINY = T5Architecture(d_model=32, encoder_layers=2, decoder_layers=2, num_heads=2, d_kv=16, d_ff=64, dropout=0.0)


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


def make_model(vocab: CodeVocab, seed: int, arch: T5Architecture | None = None) -> T5ForConditionalGeneration:
    """The TIGER-size model genrec trains (configs/tiger/beauty.yaml), with random weights and no dropout."""
    torch.manual_seed(seed)
    return build_t5(vocab, arch or T5Architecture(dropout=0.0)).eval()


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


def hf_generate(model, ids, mask, *, vocab: CodeVocab, trie: dict | None, beam: int, top_k: int) -> torch.Tensor:
    """HF beam search, constrained to the catalogue by a prefix trie when ``trie`` is given; (b * top_k, 1 + l)."""
    def allowed(batch_id: int, sent: torch.Tensor) -> list[int]:
        return trie.get(tuple(sent[1:].tolist()), [EOS_ID])

    return model.generate(
        input_ids=ids, attention_mask=mask, num_beams=beam, num_return_sequences=top_k, max_new_tokens=vocab.levels,
        do_sample=False, prefix_allowed_tokens_fn=allowed if trie is not None else None,
    )


def hf_item_sets(sequences: torch.Tensor, vocab: CodeVocab, item_of: dict, top_k: int) -> list[set[int]]:
    """Per user, the set of catalogue items among HF's ``top_k`` returned sequences (-1 for an invalid one)."""
    items = [item_of.get(tuple(p), -1) for p in sequences[:, 1 : 1 + vocab.levels].tolist()]
    return [set(items[u * top_k : (u + 1) * top_k]) for u in range(len(items) // top_k)]


class Setup(NamedTuple):
    """What every method decodes with: the catalogue, its index and trie, the model and the users' histories."""

    codes: torch.Tensor
    vocab: CodeVocab
    model: T5ForConditionalGeneration
    index: PrefixIndex
    trie: dict
    item_of: dict
    ids: torch.Tensor  # (max batch, 80) history tokens on the device
    mask: torch.Tensor
    catalogue: str


def build_setup(*, device: torch.device, users: int, n_items: int, tokenizer: str | None, tiny: bool,
                seed: int) -> Setup:
    """The model (random weights), the catalogue (synthetic, or a tokenizer artifact's) and ``users`` histories."""
    if tokenizer:
        from genrec.tokenizer.artifact import load_tokenizer

        artifact = load_tokenizer(tokenizer)
        codes, sizes, catalogue = artifact.codes.long(), tuple(artifact.level_sizes), f"artifact {tokenizer}"
    else:
        size = 16 if tiny else 256
        codes = make_catalogue(n_items, levels=3, size=size, seed=seed)
        sizes, catalogue = (size, size, size, int(codes[:, -1].max()) + 1), f"synthetic, {n_items} items"
    vocab = CodeVocab(level_sizes=sizes)
    model = make_model(vocab, seed=seed, arch=TINY if tiny else None).to(device)
    tokens = vocab.encode(codes)
    g = torch.Generator().manual_seed(seed + 1)
    history = vocab.encode(codes[torch.randint(0, len(codes), (users, 20), generator=g)])
    ids = history.flatten(1).to(device)  # (users, 80)
    return Setup(codes, vocab, model, PrefixIndex(codes, vocab.level_sizes, device=device), build_trie(tokens),
                 {tuple(p): i for i, p in enumerate(tokens.tolist())}, ids, torch.ones_like(ids), catalogue)


def engine(setup: Setup, *, dtype: str, mode: str, batch: int, beam: int, top_k: int,
           compiled: dict | None = None) -> Callable:
    """The engine as ``run(ids, mask) -> BeamSearchOutput`` for one dtype and mode (compiled or captured here).

    ``compiled`` keeps one compiled search per dtype, so that compile and compile+graph compile once.
    """
    amp = None if dtype == "fp32" else torch.bfloat16
    args = dict(beam_width=beam, top_k=top_k, amp_dtype=amp, fp32_head=dtype == "bf16-fp32head")
    if mode == "eager":
        return lambda ids, mask: t5_beam_search(setup.model, ids, mask, setup.index, setup.vocab, **args)
    search = t5_search_function(setup.model, setup.index, setup.vocab, **args)
    if mode.startswith("compile"):
        compiled = {} if compiled is None else compiled
        search = compiled.setdefault(dtype, torch.compile(search, dynamic=False))
    if mode.endswith("graph"):
        return CudaGraph(search, setup.ids[:batch], setup.mask[:batch])
    return search


def _amp(device: torch.device, dtype: str):
    return nullcontext() if dtype == "fp32" else torch.autocast(device.type, dtype=torch.bfloat16)


def timed(fn: Callable, sync: Callable) -> tuple[float, object]:
    sync()
    start = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - start, out


def summarise(times: list[float], users: int) -> dict:
    """users/s over all timed batches, p50 / p90 batch latency, batches timed."""
    return {"users_per_s": users * len(times) / sum(times), "p50_ms": 1e3 * float(np.percentile(times, 50)),
            "p90_ms": 1e3 * float(np.percentile(times, 90)), "batches": len(times)}


def measure(setup: Setup, args: argparse.Namespace, *, on_rows: Callable[[list[dict]], None] = lambda rows: None,
            log: Callable[[str], None] = print) -> list[dict]:
    """Times every method at every batch size; returns one row per (batch, method, dtype, mode).

    An engine row's ``speedup_vs_hf_constrained`` / ``_free`` divide by the faster of HF's fp32 and bf16 runs (a
    conservative ratio); ``same_topk_as_hf_constrained`` compares its first users' top-K sets with HF constrained
    beam search in fp32. A variant that cannot be built (no CUDA for a graph, a compile error) is a row with
    ``skipped`` or ``error`` and the others still run.
    """
    device = setup.ids.device
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    vocab, top_k = setup.vocab, args.top_k
    rows: list[dict] = []
    hf_rows: dict[tuple, dict] = {}  # (hf batch, method, dtype) -> row: measured once, reused by larger batches
    hf_warm: set[tuple] = set()
    compiled: dict[str, Callable] = {}
    # The compile modes run last, at one batch size: compiling takes long, and what came before is written by then.
    plain = [m for m in args.modes if not m.startswith("compile")]
    rounds = [(bs, plain) for bs in args.batch_sizes if plain]
    if len(plain) < len(args.modes):
        rounds.append((args.compile_batch, [m for m in args.modes if m.startswith("compile")]))
    for bs, modes in rounds:
        ids, mask = setup.ids[:bs], setup.mask[:bs]
        hf_bs = min(bs, args.hf_max_users)
        runs: dict[tuple, Callable] = {}  # (method, dtype, mode) -> run(ids, mask)
        notes: dict[tuple, dict] = {}
        for dtype in args.dtypes:
            for mode in modes:
                key = ("engine", dtype, mode)
                if mode.startswith("compile") and dtype not in args.compile_dtypes:
                    continue
                if "graph" in mode and device.type != "cuda":
                    notes[key] = {"skipped": "CUDA graphs need a CUDA device"}
                    continue
                start = time.perf_counter()
                try:
                    run = engine(setup, dtype=dtype, mode=mode, batch=bs, beam=args.beam, top_k=top_k,
                                 compiled=compiled)
                    with torch.inference_mode():
                        run(ids, mask)  # warm-up: compiles, first-call allocations, kernels
                    sync()
                    runs[key], notes[key] = run, {"setup_seconds": round(time.perf_counter() - start, 2)}
                except Exception as error:  # noqa: BLE001 -- a variant that fails is recorded, the others run
                    notes[key] = {"error": f"{type(error).__name__}: {str(error).strip().splitlines()[0][:300]}"}
                    log(f"batch {bs}, engine {dtype} {mode}: {notes[key]['error']}")
        for dtype in args.hf_dtypes:
            for method in ("hf_constrained", "hf_free"):
                if (hf_bs, method, dtype) not in hf_rows:
                    trie = setup.trie if method == "hf_constrained" else None
                    runs[(method, dtype, "eager")] = (
                        lambda i, m, trie=trie: hf_generate(setup.model, i[:hf_bs], m[:hf_bs], vocab=vocab,
                                                            trie=trie, beam=args.beam, top_k=top_k))
                    if (method, dtype) not in hf_warm:  # warm-up: lazy imports, first-call allocations
                        hf_warm.add((method, dtype))
                        with torch.inference_mode(), _amp(device, dtype):
                            hf_generate(setup.model, ids[:2], mask[:2], vocab=vocab, trie=trie, beam=args.beam,
                                        top_k=top_k)
        counts = {key: args.repeats if key[0] == "engine" else max(1, min(args.repeats, args.hf_max_users // hf_bs))
                  for key in runs}
        times: dict[tuple, list[float]] = {key: [] for key in runs}
        outputs: dict[tuple, object] = {}
        # Interleave the methods so that load from other processes hits them alike (a shared machine drifts).
        for r in range(max(counts.values(), default=0)):
            for key, run in runs.items():
                if r < counts[key]:
                    # The engine applies its own dtype; HF's generate runs under autocast for bf16.
                    with torch.inference_mode(), _amp(device, "fp32" if key[0] == "engine" else key[1]):
                        dt, outputs[key] = timed(lambda: run(ids, mask), sync)
                    times[key].append(dt)
        for (method, dtype, mode), out in outputs.items():
            if method != "engine":
                row = {"batch": hf_bs, "method": method, "dtype": dtype, "mode": mode,
                       **summarise(times[(method, dtype, mode)], hf_bs),
                       "invalid": invalid_rate(out, vocab, setup.item_of),
                       "_sets": hf_item_sets(out, vocab, setup.item_of, top_k)}
                hf_rows[(hf_bs, method, dtype)] = row
                rows.append(row)
        for key, note in notes.items():
            method, dtype, mode = key
            row = {"batch": bs, "method": method, "dtype": dtype, "mode": mode, **note}
            if key in outputs:
                out = outputs[key]
                row.update(summarise(times[key], bs))
                row["invalid"] = float((out.items < 0).float().mean())  # -1: fewer valid items than top_k
                for method_ in ("hf_constrained", "hf_free"):
                    hf = [hf_rows[k] for k in hf_rows if k[:2] == (hf_bs, method_)]
                    if hf:
                        row[f"speedup_vs_{method_}"] = row["users_per_s"] / max(h["users_per_s"] for h in hf)
                reference = hf_rows.get((hf_bs, "hf_constrained", "fp32"))
                if reference is not None:
                    same = sum(set(r) == s for r, s in zip(out.items[:hf_bs].tolist(), reference["_sets"]))
                    row["same_topk_as_hf_constrained"] = same / hf_bs
            rows.append(row)
        del runs, outputs
        if device.type == "cuda":
            torch.cuda.empty_cache()
        on_rows(rows)
        log(f"batch {bs} done")
    return rows


def public(rows: list[dict]) -> list[dict]:
    """Rows without their private fields (HF's per-user item sets)."""
    return [{k: v for k, v in row.items() if not k.startswith("_")} for row in rows]


def table(rows: list[dict]) -> str:
    """The rows as a markdown table."""
    lines = ["| batch | method | dtype | mode | users/s | p50 ms | p90 ms | batches | invalid | vs HF constrained "
             "| vs HF free | same top-K as HF |", "| ---: | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: "
             "| ---: | ---: |"]
    for r in rows:
        if "users_per_s" not in r:
            lines.append(f"| {r['batch']} | {r['method']} | {r['dtype']} | {r['mode']} | "
                         f"{r.get('skipped') or r.get('error')} | | | | | | | |")
            continue
        ratio = lambda k: f"{r[k]:.1f}x" if k in r else ""  # noqa: E731
        same = f"{100 * r['same_topk_as_hf_constrained']:.0f}%" if "same_topk_as_hf_constrained" in r else ""
        lines.append(f"| {r['batch']} | {r['method']} | {r['dtype']} | {r['mode']} | {r['users_per_s']:.1f} "
                     f"| {r['p50_ms']:.1f} | {r['p90_ms']:.1f} | {r['batches']} | {100 * r['invalid']:.1f}% "
                     f"| {ratio('speedup_vs_hf_constrained')} | {ratio('speedup_vs_hf_free')} | {same} |")
    return "\n".join(lines)


def _names(text: str, allowed: tuple[str, ...], option: str) -> list[str]:
    names = [x for x in text.split(",") if x]
    bad = [x for x in names if x not in allowed]
    if bad or not names:
        raise SystemExit(f"{option}: unknown {bad or 'empty list'}; choose from {', '.join(allowed)}")
    return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-sizes", default=None, help="comma-separated; default 1,64,256 (cpu) or 256,1024,4096")
    parser.add_argument("--repeats", type=int, default=5, help="timed batches per batch size for the engine")
    parser.add_argument("--hf-max-users", type=int, default=256, help="users timed per batch size for HF")
    parser.add_argument("--dtypes", default="fp32", help=f"engine dtypes, comma-separated: {', '.join(DTYPES)}")
    parser.add_argument("--hf-dtypes", default="fp32", help="HF dtypes, comma-separated: fp32, bf16")
    parser.add_argument("--modes", default="eager", help=f"engine modes, comma-separated: {', '.join(MODES)}")
    parser.add_argument("--compile-batch", type=int, default=1024, help="the batch size of the compile modes")
    parser.add_argument("--compile-dtypes", default="bf16-fp32head", help="the dtypes of the compile modes")
    parser.add_argument("--beam", type=int, default=20)
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--n-items", type=int, default=12101, help="synthetic catalogue size (without --tokenizer)")
    parser.add_argument("--tokenizer", default=None, help="decode a tokenizer artifact's IDs instead of synthetic ones")
    parser.add_argument("--tiny", action="store_true", help="a tiny T5 and catalogue codebooks of 16 (smoke runs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the rows here (after every batch size)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    default_sizes = "1,64,256" if device.type == "cpu" else "256,1024,4096"
    try:
        args.batch_sizes = [int(x) for x in (args.batch_sizes or default_sizes).split(",")]
    except ValueError:
        raise SystemExit(f"--batch-sizes: expected comma-separated integers, got {args.batch_sizes!r}") from None
    if min(args.batch_sizes) < 1 or args.repeats < 1 or args.hf_max_users < 1:
        raise SystemExit("--batch-sizes, --repeats and --hf-max-users must be >= 1")
    args.dtypes = _names(args.dtypes, DTYPES, "--dtypes")
    args.hf_dtypes = _names(args.hf_dtypes, ("fp32", "bf16"), "--hf-dtypes")
    args.modes = _names(args.modes, MODES, "--modes")
    args.compile_dtypes = _names(args.compile_dtypes, DTYPES, "--compile-dtypes")
    if args.tokenizer and not Path(args.tokenizer).is_dir():
        raise SystemExit(f"--tokenizer {args.tokenizer}: no such artifact folder")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    compiles = any(m.startswith("compile") for m in args.modes)
    users = max([*args.batch_sizes, *([args.compile_batch] if compiles else [])])
    setup = build_setup(device=device, users=users, n_items=args.n_items, tokenizer=args.tokenizer,
                        tiny=args.tiny, seed=args.seed)
    header = {**provenance(device), "torch": torch.__version__, "beam": args.beam, "top_k": args.top_k,
              "n_items": len(setup.codes), "level_sizes": list(setup.vocab.level_sizes), "catalogue": setup.catalogue,
              "model": "tiny" if args.tiny else "TIGER size, random weights"}

    def write(rows: list[dict]) -> None:
        if args.json:
            Path(args.json).write_text(json.dumps({**header, "rows": public(rows)}, indent=1) + "\n")

    rows = public(measure(setup, args, on_rows=write))
    print()
    print(" | ".join(f"{k}={v}" for k, v in header.items()))
    print()
    print(table(rows))
    print(json.dumps({**header, "rows": rows}))


if __name__ == "__main__":
    main()
