"""Behaviour fingerprint: what a refactor must leave bit-identical.

Trains TIGER (with and without user tokens), MMGRec, MSCGRec and ColaRec on the synthetic walk through the CLI
(60 steps each, dropout on, one torch thread, seed 0), tests each, and refits the Beauty residual k-means tokenizer.
Writes a JSON with a hash of every trained tensor, the test metrics and a hash of the Beauty codes. Two
fingerprints (before and after a change) are compared with ``--compare``: same weights (as a multiset, so renamed
parameters still match), same metrics, same codes.

Usage:
    python benchmarks/fingerprint.py --out after.json [--paths old-layout.json]
    python benchmarks/fingerprint.py --compare before.json after.json

``--paths`` names the classes and CLI arguments of another layout (for a fingerprint of older code, run from a
checkout of it); the defaults are this checkout's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from importlib import import_module
from pathlib import Path

import numpy as np
import torch

PATHS = {
    "artifact": "genrec.tokenizer.artifact",
    "tiger": "genrec.seq2seq.module.GenerativeRecommender",
    "data": "genrec.seq2seq.data.SemanticIdData",
    "npy": "genrec.features.NpyFeatures",
    "mmgrec_args": ["--model.encoder=genrec.seq2seq.encoders.RelationAwareHistory"],
    "mscgrec_args": ["--model.encoder=genrec.seq2seq.mscgrec.MultimodalHistory",
                     "--model.encoder.modality_dropout=0.2", "--model.constrained_softmax=true"],
    "colarec_args": ["--model.encoder=genrec.seq2seq.colarec.ContentHistory", "--model.encoder.generation_weight=1.0"],
    "beauty_config": "configs/tokenizer/beauty-rqkmeans.yaml",
}
N = 27


def walk(tmp: Path, paths: dict) -> tuple[Path, Path, Path, Path]:
    """The walk dataset (108 users, +1 mod 27), its base-3 IDs, a text-like second modality and item content."""
    save = import_module(paths["artifact"]).save_tokenizer
    (tmp / "walk").mkdir(parents=True, exist_ok=True)
    lines = [f"{u + 1} " + " ".join(str((u + t) % N + 1) for t in range(8)) for u in range(108)]
    (tmp / "walk" / "sequences.txt").write_text("\n".join(lines) + "\n")
    i = torch.arange(N)
    ids = save(tmp / "ids", codes=torch.stack([i // 9, (i // 3) % 3, i % 3, torch.zeros_like(i)], dim=1),
               level_sizes=(3, 3, 3, 1), codebooks=None, config={}, metrics={}, fingerprint="walk", plot=False)
    text = save(tmp / "text", codes=torch.stack([i % 5, (i // 5) % 6], dim=1), level_sizes=(5, 6), codebooks=None,
                config={}, metrics={}, fingerprint="text", plot=False)
    content = np.eye(N, 32, dtype=np.float32) + 0.05 * np.random.default_rng(0).standard_normal((N, 32)).astype(np.float32)
    np.save(tmp / "content.npy", content)
    return tmp / "walk", ids, text, tmp / "content.npy"


def train(main, paths: dict, dataset: Path, ids: Path, out: Path, *extra: str) -> dict:
    cli = main(["fit", f"--model={paths['tiger']}", "--model.arch.d_model=32", "--model.arch.encoder_layers=2",
                "--model.arch.decoder_layers=2", "--model.arch.num_heads=2", "--model.arch.d_kv=16",
                "--model.arch.d_ff=64", "--model.arch.dropout=0.1", "--model.lr=0.005", "--model.warmup_steps=20",
                f"--data={paths['data']}", f"--data.dataset={dataset}", f"--data.tokenizer={ids}", "--data.max_len=5",
                "--data.batch_size=64", "--data.eval_batch_size=64", "--trainer.logger=false",
                "--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.enable_progress_bar=false",
                "--trainer.enable_model_summary=false", f"--trainer.default_root_dir={out}", "--seed_everything=0",
                "--trainer.max_steps=60", "--trainer.check_val_every_n_epoch=100", "--test_after_fit=true",
                "--examples=0", *extra])
    state = cli.model.state_dict()
    hashes = [hashlib.sha256(v.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16] for v in state.values()]
    metrics = {k: float(v) for k, v in sorted(cli.trainer.callback_metrics.items()) if k.startswith("test/")}
    return {"keys": list(state), "tensors": hashes, "sorted_tensors": sorted(hashes), "metrics": metrics}


def fingerprint(paths: dict, *, beauty: bool) -> dict:
    torch.set_num_threads(1)
    from genrec.cli import main

    result = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        dataset, ids, text, content = walk(tmp, paths)
        result["tiger"] = train(main, paths, dataset, ids, tmp / "r1")
        result["tiger_ub"] = train(main, paths, dataset, ids, tmp / "r2", "--data.user_buckets=8")
        result["mmgrec"] = train(main, paths, dataset, ids, tmp / "r3", *paths["mmgrec_args"], "--data.user_buckets=8")
        modality = json.dumps([{"tokenizer": str(text)}])
        result["mscgrec"] = train(main, paths, dataset, ids, tmp / "r4", *paths["mscgrec_args"],
                                  f"--data.input_modalities={modality}")
        source = json.dumps([{"class_path": paths["npy"], "init_args": {"path": str(content)}}])
        result["colarec"] = train(main, paths, dataset, ids, tmp / "r5", *paths["colarec_args"],
                                  f"--data.content_sources={source}")
        if beauty:
            out = tmp / "beauty"
            main(["fit", "--config", paths["beauty_config"], f"--model.init_args.output_dir={out}",
                  f"--trainer.default_root_dir={tmp / 'rt'}"])
            result["beauty_codes"] = hashlib.sha256(np.load(out / "codes.npy").tobytes()).hexdigest()
    return result


def compare(before: dict, after: dict) -> bool:
    same = True
    for name, a in before.items():
        b = after.get(name)
        if isinstance(a, dict):
            weights, metrics = a["sorted_tensors"] == b["sorted_tensors"], a["metrics"] == b["metrics"]
            renamed = "" if a["keys"] == b["keys"] else " (parameters renamed)"
            print(f"{name}: weights {'identical' if weights else 'DIFFER'}{renamed}, "
                  f"metrics {'identical' if metrics else 'DIFFER'}")
            same &= weights and metrics
        else:
            print(f"{name}: {'identical' if a == b else 'DIFFERS'}")
            same &= a == b
    return same


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="where to write the fingerprint")
    parser.add_argument("--paths", help="a JSON file overriding the class paths and arguments (another layout)")
    parser.add_argument("--no-beauty", action="store_true", help="skip the Beauty tokenizer refit")
    parser.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"))
    args = parser.parse_args()
    if args.compare:
        before, after = (json.loads(Path(p).read_text()) for p in args.compare)
        return 0 if compare(before, after) else 1
    if not args.out:
        parser.error("--out is required unless --compare is given")
    paths = {**PATHS, **(json.loads(Path(args.paths).read_text()) if args.paths else {})}
    Path(args.out).write_text(json.dumps(fingerprint(paths, beauty=not args.no_beauty), indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
