"""Trains and tests the generative systems side by side, one after another in one run, and records them.

Each config runs as ``python train.py fit --config <base> --config <config>`` in its own process (the same command a
user types; one base for all, so the systems share their trainer settings), on the same split, metrics and beam
search; their run records are copied to ``benchmarks/records/`` under ``<date>-<name>.json`` and drawn as one bar
chart of Recall@10 / NDCG@10.

    python benchmarks/systems.py                       # TIGER, MMGRec, ColaRec, MSCGRec, CPU-sized, on Beauty
    python benchmarks/systems.py --base configs/base/gpu.yaml --configs configs/mmgrec/beauty.yaml \
        configs/tiger/beauty.yaml                      # GPU sizes
    python benchmarks/systems.py --configs configs/base/baseline.yaml,configs/sasrec/beauty.yaml \
        configs/tiger/beauty-cpu.yaml                  # the SASRec bar beside TIGER, each on its own base

An entry of ``--configs`` is one experiment config (run on ``--base``) or a comma-separated list of config files
given in that order (base first), for systems with a base of their own such as SASRec.

The CPU-sized configs need SASRec's item embeddings first (ColaRec and MSCGRec IDs come from them):
``python train.py fit --config configs/base/baseline.yaml --config configs/sasrec/beauty.yaml``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from genrec.report import plot_metric_bars

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = (
    "configs/tiger/beauty-cpu.yaml",
    "configs/mmgrec/beauty-cpu.yaml",
    "configs/colarec/beauty-cpu.yaml",
    "configs/mscgrec/beauty-cpu.yaml",
)


def config_files(base: str, entry: str) -> list[str]:
    """The config files of one ``--configs`` entry: ``[base, entry]``, or the entry's own comma-separated list."""
    files = [f for f in entry.split(",") if f] if "," in entry else [base, entry]
    missing = [f for f in files if not (ROOT / f).exists() and not Path(f).exists()]
    if missing:
        raise SystemExit(f"--configs entry {entry!r}: no such file {missing}")
    return files


def run(base: str, config: str, extra: list[str], records: Path) -> dict:
    """Runs one ``--configs`` entry to the end of its test; returns its run record (with the wall time added)."""
    before = set(records.glob("*.json"))
    configs = [a for f in config_files(base, config) for a in ("--config", f)]
    cmd = [sys.executable, "train.py", "fit", *configs, "--trainer.enable_progress_bar=false", "--examples=0", *extra]
    print(f"\n=== {' '.join(cmd[1:])}", flush=True)
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "GENREC_RECORDS": str(records)}, check=False)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{config} failed with exit code {result.returncode}")
    new = sorted(set(records.glob("*.json")) - before)
    if len(new) != 1:
        raise SystemExit(f"{config} wrote {len(new)} run records, expected 1 (did it test after fit?)")
    record = json.loads(new[0].read_text())
    record["wall_seconds"] = round(wall, 1)
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="configs/base/cpu.yaml", help="base config given before every experiment")
    parser.add_argument("--configs", nargs="+", default=list(DEFAULT), help="experiment configs to run in order")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "records"), help="where the records go")
    parser.add_argument("--tag", default="", help="suffix of the record names, e.g. -8epochs")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="after --: overrides passed to every run")
    args = parser.parse_args(argv)
    extra = [a for a in args.extra if a != "--"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for config in args.configs:
        config_files(args.base, config)  # every file exists before the first run starts
    with tempfile.TemporaryDirectory() as tmp:
        records = [run(args.base, config, extra, Path(tmp)) for config in args.configs]
    names = []
    for entry, record in zip(args.configs, records):
        config = config_files(args.base, entry)[-1]
        name = f"{date.today().isoformat().replace('-', '')}-{Path(config).parent.name}-{Path(config).stem}{args.tag}"
        (out / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
        names.append(f"{record['model']}\n{Path(config).parent.name}/{Path(config).stem}")
        m = record["metrics"]
        print(f"{record['model']:8s} {config:36s} R@10 {m['recall@10']:.4f}  N@10 {m['ndcg@10']:.4f}  "
              f"train {record['train_seconds']:.0f} s  wall {record['wall_seconds']:.0f} s")
    plot_metric_bars(
        names, {m: [r["metrics"][m] for r in records] for m in ("recall@10", "ndcg@10")},
        out / f"{date.today().isoformat().replace('-', '')}-systems{args.tag}.png",
        title=f"{records[0]['dataset']}, {records[0]['device']}, commit {records[0]['commit']}",
        ylabel="test metric (all users)",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
