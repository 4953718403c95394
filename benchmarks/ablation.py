"""Runs a plan of variants of one config, one after another, and tables them by their best validation metrics.

An ablation chooses by validation and never looks at the test split: every variant runs as
``python train.py fit --config <base> --config <config> <its overrides> --test_after_fit=false`` with a CSV logger,
and its row is the validation of its best epoch by val/ndcg@10. A plan is a YAML file:

    base: configs/base/cpu.yaml          # given before the config
    config: configs/tiger/beauty-cpu.yaml
    common: ["--trainer.max_epochs=4"]   # overrides of every variant (optional)
    variants:
      - name: baseline                   # the reference row: the first variant
        args: &shared ["--data.init_args.max_len=20"]
      - name: constrained-softmax        # one change against the reference
        args: [*shared, "--model.init_args.constrained_softmax=true"]   # anchors share arguments between rows
      - name: text+cooc IDs
        config: configs/tiger/beauty-cooc.yaml   # a variant may change the config instead of overriding it
        before: [["python", "train.py", "fit", "--config", "configs/tokenizer/x.yaml"]]  # timed with the run
      - name: cooc IDs, constrained softmax
        config: configs/tiger/beauty-cooc.yaml
        args: ["--model.init_args.constrained_softmax=true"]
        against: text+cooc IDs           # the row it changes one thing of (default: the first)

Each finished variant's row is written to ``benchmarks/records/ablation/<plan>/<name>.json`` (with device, commit,
date, load and command) and is not rerun unless ``--force``; ``--table`` only prints the markdown table and draws
the bar chart of what is recorded.

    python benchmarks/ablation.py benchmarks/plans/tiger-beauty-cpu.yaml [--only NAME ...] [--table]
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import shlex
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from genrec.provenance import device_name, git_commit, load_average  # noqa: E402
from genrec.report import plot_metric_bars  # noqa: E402

METRICS = ("recall@10", "ndcg@10", "recall@20", "ndcg@20")


def slug(name: str) -> str:
    """A file name for a variant name."""
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", name).strip("-").lower()


def load_plan(path: Path) -> dict:
    """Reads and checks a plan; raises naming the file and what is wrong."""
    plan = yaml.safe_load(path.read_text())
    if not isinstance(plan, dict) or not isinstance(plan.get("variants"), list) or not plan["variants"]:
        raise SystemExit(f"{path}: a plan needs a non-empty 'variants' list")
    for key in ("base", "config"):
        if key not in plan:
            raise SystemExit(f"{path}: missing {key!r}")
    names = [v.get("name") for v in plan["variants"]]
    if any(not isinstance(n, str) or not n for n in names):
        raise SystemExit(f"{path}: every variant needs a name")
    if len(set(map(slug, names))) != len(names):
        raise SystemExit(f"{path}: two variants share a name: {names}")
    for v in plan["variants"]:
        # YAML anchors let rows share arguments (args: [*pooled, "--x=1"]): flatten the nested lists they make.
        v["args"] = [a for item in v.get("args", []) for a in (item if isinstance(item, list) else [item])]
        if v.get("against") is not None and v["against"] not in names:
            raise SystemExit(f"{path}: variant {v['name']!r} is against {v['against']!r}, which the plan lacks")
    return plan


def best_validation(metrics_csv: Path) -> dict:
    """The validation row with the highest val/ndcg@10 in a Lightning CSV log (ties: the earliest)."""
    with metrics_csv.open() as f:
        rows = [r for r in csv.DictReader(f) if r.get("val/ndcg@10")]
    if not rows:
        raise SystemExit(f"{metrics_csv}: no validation ran (is the training long enough to reach one?)")
    best = max(rows, key=lambda r: float(r["val/ndcg@10"]))
    out = {name: round(float(best[f"val/{name}"]), 6) for name in METRICS if best.get(f"val/{name}")}
    out["epoch"] = int(best["epoch"])
    out["history"] = [
        {"epoch": int(r["epoch"]), "recall@10": round(float(r["val/recall@10"]), 6),
         "ndcg@10": round(float(r["val/ndcg@10"]), 6)}
        for r in rows
    ]
    return out


def run_variant(plan: dict, variant: dict, workdir: Path) -> dict:
    """Runs one variant (and its ``before`` commands) and returns its row."""
    config = variant.get("config", plan["config"])
    log_dir = workdir / "logs"
    cmd = [
        sys.executable, "train.py", "fit", "--config", plan["base"], "--config", config,
        *plan.get("common", []), *variant.get("args", []),
        "--test_after_fit=false", "--examples=0", "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={workdir}",
        "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
        f"--trainer.logger.init_args.save_dir={log_dir}", "--trainer.logger.init_args.name=csv",
    ]
    start = time.perf_counter()
    for before in variant.get("before", []):
        print(f"\n=== {shlex.join(before)}", flush=True)
        subprocess.run([sys.executable if a == "python" else a for a in before], cwd=ROOT, check=True)
    print(f"\n=== {variant['name']}: {shlex.join(cmd[1:])}", flush=True)
    result = subprocess.run(cmd, cwd=ROOT, check=False)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"variant {variant['name']!r} failed with exit code {result.returncode}")
    logs = sorted(log_dir.glob("csv/version_*/metrics.csv"))
    if not logs:
        raise SystemExit(f"variant {variant['name']!r} wrote no CSV log under {log_dir}")
    now = datetime.now(timezone.utc)
    return {
        "name": variant["name"],
        "config": config,
        "args": [*plan.get("common", []), *variant.get("args", [])],
        "before": [shlex.join(b) for b in variant.get("before", [])],
        "validation": best_validation(logs[-1]),
        "wall_seconds": round(wall, 1),
        "device": device_name(),
        "commit": git_commit(),
        "load": load_average(),
        "date": now.date().isoformat(),
        "command": shlex.join(["python", *cmd[1:]]),
    }


def table(plan: dict, rows: list[dict]) -> str:
    """The plan's markdown table: one row per recorded variant, its change and Δ against its reference row."""
    by_name = {row["name"]: row for row in rows}
    against = {v["name"]: v.get("against") for v in plan["variants"]}
    lines = [
        "| variant | change against | val R@10 | val N@10 | Δ N@10 | best epoch | wall | commit | load |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for row in rows:
        v = row["validation"]
        ref = by_name.get(against.get(row["name"]) or rows[0]["name"])
        if ref is None or ref is row:
            change, delta = "(reference)", ""
        else:
            args = " ".join(a for a in row["args"] if a not in ref["args"]) or "(same arguments)"
            config = f"`{row['config']}` " if row["config"] != ref["config"] else ""
            change = f"{config}{args} — vs {ref['name']}"
            delta = f"{(v['ndcg@10'] / ref['validation']['ndcg@10'] - 1) * 100:+.1f} %"
        lines.append(
            f"| {row['name']} | {change} | {v['recall@10']:.4f} | {v['ndcg@10']:.4f} | {delta} | {v['epoch']} | "
            f"{row['wall_seconds'] / 60:.1f} min | {row['commit']} | {row['load']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("plan", help="plan YAML (see the module docstring)")
    parser.add_argument("--only", nargs="+", default=None, help="run only these variants (by name)")
    parser.add_argument("--force", action="store_true", help="rerun variants that already have a row")
    parser.add_argument("--table", action="store_true", help="print the table of recorded rows and plot; run nothing")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "records" / "ablation"))
    args = parser.parse_args(argv)
    plan_path = Path(args.plan)
    plan = load_plan(plan_path)
    out = Path(args.out) / plan_path.stem
    out.mkdir(parents=True, exist_ok=True)
    names = [v["name"] for v in plan["variants"]]
    unknown = set(args.only or ()) - set(names)
    if unknown:
        raise SystemExit(f"no variant named {sorted(unknown)} in {plan_path} (it has {names})")
    if not args.table:
        for variant in plan["variants"]:
            path = out / f"{slug(variant['name'])}.json"
            if (args.only and variant["name"] not in args.only) or (path.exists() and not args.force):
                continue
            workdir = ROOT / "runs" / "ablation" / plan_path.stem / slug(variant["name"])
            row = run_variant(plan, variant, workdir)
            path.write_text(json.dumps(row, indent=2) + "\n")
            v = row["validation"]
            print(f"--- {row['name']}: val R@10 {v['recall@10']:.4f} N@10 {v['ndcg@10']:.4f} "
                  f"(epoch {v['epoch']}), {row['wall_seconds']:.0f} s", flush=True)
    rows = [json.loads(p.read_text()) for n in names if (p := out / f"{slug(n)}.json").exists()]
    if rows:
        print(table(plan, rows))
        values = {f"val {m}": [r["validation"][m] for r in rows] for m in ("recall@10", "ndcg@10")}
        plot_metric_bars([r["name"] for r in rows], values, out / "ablation.png",
                         title=f"{plan_path.stem}: best validation per variant", rotate=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
