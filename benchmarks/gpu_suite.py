"""Every GPU claim of genrec measured by one command on one CUDA device, in under nine minutes (issue 13).

    python benchmarks/gpu_suite.py --prepare .gpu-bundle      # here (CPU, PyPI reachable): wheels + tokenizer
    <the install line it prints>, which ends in: python3 benchmarks/gpu_suite.py --bundle .gpu-bundle --out OUT
    python benchmarks/gpu_suite.py --smoke --out /tmp/smoke    # the same stages with tiny sizes, on CPU

Stages, in this order, each in its own process group with its own time cap (a stage that fails or runs out of time
is recorded as such, its processes are killed, and the next one runs; the caps add up to at most
``--budget-minutes``, 9 by default):

    tests  ``pytest -m gpu`` over the test files that hold CUDA tests: beam search on CUDA equals CPU, a CUDA graph
           of the search replays it exactly, the training step never synchronises, batches gathered on the GPU.
    beam   ``benchmarks/beam_search.py``: the engine against HF constrained and unconstrained ``generate`` at batch
           256, 1,024 and 4,096 (HF on 256 users), fp32 / bf16 / bf16 with the fp32 head, eager and as one CUDA
           graph, then torch.compile with and without a graph at 1,024; users/s, p50/p90, ratios, invalid rate.
    train  ``benchmarks/gpu_train.py``: TIGER-size Beauty (``configs/tiger/beauty.yaml``) fitted into
           ``--train-minutes`` (default 5) by ``genrec.training.TimeBudget``, tested on all users by constrained
           beam search (a run record), SASRec on the same budget beside it; samples/s, FLOPs per sample, MFU.
    gate   ``benchmarks/bf16_overlap.py`` on the train stage's checkpoint, 8,192 test users: top-20 overlap of
           bf16 with fp32 decoding (gate >= 99 %), plain autocast against the fp32 head; HF's unconstrained invalid
           rate on the trained model.

``--out`` receives ``suite.log`` (everything every stage printed), one JSON record per stage (``tests.json``,
``beam.json``, ``train.json``, ``gate.json``) and ``summary.json`` (all of them, the summary table printed at the
end and the goals met or not): six files, as the GPU machine's ``$OUT`` allows. Checkpoints and logs go to
``--work`` (a temporary folder by default).

The GPU machine is bare and offline (``benchmarks/gpu_bundle.py`` says what it lacks and how ``--prepare`` makes up
for it); every run there is offline and logs nothing to W&B.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the bare GPU machine has no installed genrec: the checkout's is the one

from gpu_bundle import WHEELS, install_line, prepare, tokenizer_path  # noqa: E402 -- beside this file

STAGES = ("tests", "beam", "train", "gate")
CAPS = {"tests": 40, "beam": 110, "gate": 40}  # seconds; train: its budget + TRAIN_MARGIN
TRAIN_MARGIN = 50  # process start, data, the test of all users, the FLOP count
SMOKE_CAPS = {"tests": 40, "beam": 20, "train": 45, "gate": 15}
SMOKE_TRAIN_MINUTES = 0.1


# ------------------------------------------------------------------------------------------ running stages
class Log:
    """Writes every line to the console and to ``suite.log``."""

    def __init__(self, path: Path) -> None:
        self.file = path.open("a", buffering=1)
        self.lock = threading.Lock()

    def __call__(self, line: str) -> None:
        with self.lock:
            print(line, flush=True)
            self.file.write(line + "\n")


def run_stage(name: str, command: list[str], *, cap: float, log: Log, env: dict | None = None) -> dict:
    """Runs one stage's command in its own process group, streaming its output, and kills it at ``cap`` seconds.

    Returns:
        ``{stage, status, seconds, cap_seconds, returncode, command, tail}``; status ``ok``, ``failed`` (non-zero
        exit) or ``timeout``. ``tail`` holds the last output lines when the stage did not end well.
    """
    log(f"$ {' '.join(command)}")
    start = time.perf_counter()
    tail: list[str] = []
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, errors="replace", start_new_session=True)

    def pump() -> None:
        for line in process.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            del tail[:-30]
            log(f"  [{name}] {line}")

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    status = "ok"
    try:
        process.wait(timeout=cap)
    except subprocess.TimeoutExpired:
        status = "timeout"
        kill_group(process)
    finally:
        if process.poll() is None:  # interrupted: take the stage's processes down with the suite
            kill_group(process)
    reader.join(timeout=10)
    if status == "ok" and process.returncode != 0:
        status = "failed"
    record = {"stage": name, "status": status, "seconds": round(time.perf_counter() - start, 1),
              "cap_seconds": cap, "returncode": process.returncode, "command": " ".join(command)}
    if status != "ok":
        record["tail"] = tail[-15:]
    log(f"{name}: {status} in {record['seconds']} s (cap {cap} s)")
    return record


def kill_group(process: subprocess.Popen) -> None:
    """Terminates a stage and every process it started, then kills what is left after 5 s."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def plan_caps(stages: list[str], *, smoke: bool, train_minutes: float, budget_minutes: float,
              overrides: dict[str, float]) -> dict[str, float]:
    """Each stage's cap in seconds; refuses a plan whose caps add up to more than the budget."""
    if smoke:
        caps = dict(SMOKE_CAPS)
    else:
        caps = {**CAPS, "train": train_minutes * 60 + TRAIN_MARGIN}
    caps.update(overrides)
    caps = {s: caps[s] for s in stages}
    if sum(caps.values()) > budget_minutes * 60:
        raise SystemExit(
            f"the stage caps add up to {sum(caps.values()):.0f} s "
            f"({', '.join(f'{s} {c:.0f}' for s, c in caps.items())}), more than --budget-minutes {budget_minutes} "
            f"({budget_minutes * 60:.0f} s): lower --train-minutes or a --cap, or raise --budget-minutes"
        )
    return caps


def child_env(work: Path) -> dict:
    """Offline, no W&B, unbuffered, the checkout first on the path."""
    env = dict(os.environ)
    env.update({"PYTHONUNBUFFERED": "1", "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false", "GENREC_RECORDS": str(work / "records"),
                "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])})
    return env


# ------------------------------------------------------------------------------------------ stage commands
def stage_command(stage: str, args: argparse.Namespace, work: Path, records: dict) -> list[str] | str:
    """The command of a stage, or the reason it is skipped."""
    py = sys.executable
    if stage == "tests":
        # Only the files that hold CUDA tests are collected (faster than importing every test module).
        files = sorted(str(f.relative_to(ROOT)) for f in (ROOT / "tests").glob("test_*.py")
                       if "pytest.mark.gpu" in f.read_text())
        return [py, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "--continue-on-collection-errors",
                f"--junitxml={work / 'junit.xml'}", *files]
    if stage == "beam":
        command = [py, "benchmarks/beam_search.py", "--json", str(work / "beam.json")]
        if args.smoke:
            return [*command, "--device", "cpu", "--tiny", "--n-items", "300", "--batch-sizes", "8,32",
                    "--hf-max-users", "4", "--repeats", "2", "--dtypes", "fp32,bf16,bf16-fp32head",
                    "--hf-dtypes", "fp32,bf16", "--modes", "eager,graph"]
        tokenizer = tokenizer_path(args.bundle)
        return [*command, "--device", "cuda", "--batch-sizes", "256,1024,4096", "--hf-max-users", "256",
                "--repeats", "5", "--dtypes", "fp32,bf16,bf16-fp32head", "--hf-dtypes", "fp32,bf16",
                "--modes", "eager,graph,compile,compile+graph", "--compile-batch", "1024",
                *(["--tokenizer", str(tokenizer)] if tokenizer else [])]
    if stage == "train":
        missing = [name for name in WHEELS if importlib.util.find_spec(name) is None]
        if missing:
            line = install_line(Path(args.bundle)) if args.bundle else "python benchmarks/gpu_suite.py --prepare DIR"
            return f"Lightning's CLI needs {', '.join(missing)}, which are not installed: {line}"
        command = [py, "benchmarks/gpu_train.py", "--work", str(work), "--train-minutes", str(args.train_minutes)]
        return command + (["--smoke"] if args.smoke else []) + (["--bundle", args.bundle] if args.bundle else [])
    if stage == "gate":
        runs = ((records.get("train") or {}).get("result") or {}).get("runs") or {}
        checkpoint = (runs.get("tiger") or {}).get("checkpoint")
        if not checkpoint or not Path(checkpoint).is_file():
            return "no trained TIGER checkpoint (the train stage did not run or wrote none)"
        users, batch, hf = ("32", "16", "4") if args.smoke else ("8192", "2048", "256")
        return [py, "benchmarks/bf16_overlap.py", "--checkpoint", checkpoint, "--users", users, "--batch-size", batch,
                "--hf-users", hf, "--device", "cpu" if args.smoke else "cuda", "--json", str(work / "gate.json")]
    raise ValueError(f"unknown stage {stage!r}")


def stage_result(stage: str, work: Path) -> dict:
    """What a stage measured, read from the file it wrote in ``work`` (empty when it wrote none)."""
    if stage == "tests":
        return junit_counts(work / "junit.xml")
    path = work / f"{stage}.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        return {"unreadable": f"{path}: {error}"}


def junit_counts(path: Path) -> dict:
    """Passed / failed / skipped counts and the failing tests' names from pytest's JUnit XML."""
    import xml.etree.ElementTree as ElementTree

    if not path.is_file():
        return {}
    cases = list(ElementTree.parse(path).getroot().iter("testcase"))
    outcome = {"failed": [], "skipped": [], "passed": []}
    for case in cases:
        name = f"{case.get('classname')}::{case.get('name')}"
        kinds = {child.tag for child in case}
        key = "failed" if kinds & {"failure", "error"} else "skipped" if "skipped" in kinds else "passed"
        outcome[key].append(name)
    return {"passed": len(outcome["passed"]), "failed": len(outcome["failed"]), "skipped": len(outcome["skipped"]),
            "failures": outcome["failed"], "skips": outcome["skipped"]}


# ------------------------------------------------------------------------------------------ the summary
TARGETS = {"users_per_s": 20000, "speedup_vs_hf_constrained": 50, "recall@10": 0.0648, "ndcg@10": 0.0384,
           "train_minutes": 10, "bf16_overlap": 0.99}


def figures(stage: str, record: dict) -> str:
    """One line of what a stage measured, for the summary table."""
    result = record.get("result") or {}
    if record["status"] == "skipped":
        return record["reason"]
    if stage == "tests":
        if not result:
            return "no JUnit report"
        text = f"{result['passed']} passed, {result['failed']} failed, {result['skipped']} skipped"
        return text + (f" ({', '.join(result['failures'])})" if result["failures"] else "")
    if stage == "beam":
        parts = []
        engine = [r for r in result.get("rows", []) if r["method"] == "engine" and "users_per_s" in r]
        for bs in sorted({r["batch"] for r in engine}):
            best = max((r for r in engine if r["batch"] == bs), key=lambda r: r["users_per_s"])
            ratio = best.get("speedup_vs_hf_constrained")
            parts.append(f"{bs}: {best['users_per_s']:,.0f} users/s ({best['dtype']} {best['mode']}"
                         + (f", {ratio:.0f}x HF constrained" if ratio else "") + ")")
        errors = [f"{r['dtype']} {r['mode']}: {r['error']}" for r in result.get("rows", []) if "error" in r]
        return "; ".join(parts + errors[:2]) or "no rows"
    if stage == "train":
        parts = []
        for name, run in (result.get("runs") or {}).items():
            metrics = (run.get("record") or {}).get("metrics") or {}
            budget = run.get("time_budget") or {}
            text = f"{name}: exit {run['returncode']}"
            if metrics:
                text += f", R@10 {metrics['recall@10']:.4f} N@10 {metrics['ndcg@10']:.4f}"
            if budget:
                text += (f", {budget['epochs']} epochs, {budget['train_seconds']:.0f} s, "
                         f"{budget['samples_per_s']} samples/s")
            if run.get("mfu") is not None:
                text += f", MFU {100 * run['mfu']:.2f} % ({run['mfu_precision']})"
            parts.append(text)
        return "; ".join(parts) or "no runs"
    if stage == "gate":
        parts = [f"{name} {100 * v['mean_topk_overlap']:.1f} % ({'pass' if v['passes'] else 'fail'})"
                 for name, v in (result.get("variants") or {}).items()]
        if "hf_unconstrained_invalid" in result:
            parts.append(f"HF unconstrained invalid {100 * result['hf_unconstrained_invalid']:.1f} %")
        return "; ".join(parts) or "no result"
    return ""


def targets(records: dict) -> list[str]:
    """The issue's GPU goals against what was measured (README, RESULTS.md)."""
    lines = []
    rows = [r for r in ((records.get("beam") or {}).get("result") or {}).get("rows", [])
            if r["method"] == "engine" and "users_per_s" in r]
    if rows:
        best = max(rows, key=lambda r: r["users_per_s"])
        ratio = max((r.get("speedup_vs_hf_constrained", 0) for r in rows), default=0)
        met = best["users_per_s"] >= TARGETS["users_per_s"]
        lines.append(f"decoding: {best['users_per_s']:,.0f} users/s at batch {best['batch']} (goal >= "
                     f"{TARGETS['users_per_s']:,}: {'met' if met else 'not met'}), up to {ratio:.0f}x HF constrained "
                     f"(goal >= {TARGETS['speedup_vs_hf_constrained']}x)")
    tiger = (((records.get("train") or {}).get("result") or {}).get("runs") or {}).get("tiger") or {}
    metrics = (tiger.get("record") or {}).get("metrics")
    if metrics:
        minutes = tiger["wall_seconds"] / 60
        met = (metrics["recall@10"] >= TARGETS["recall@10"] and metrics["ndcg@10"] >= TARGETS["ndcg@10"]
               and minutes <= TARGETS["train_minutes"])
        lines.append(f"TIGER-size Beauty: R@10 {metrics['recall@10']:.4f} / N@10 {metrics['ndcg@10']:.4f} in "
                     f"{minutes:.1f} min (goal >= {TARGETS['recall@10']} / {TARGETS['ndcg@10']} in <= "
                     f"{TARGETS['train_minutes']} min: {'met' if met else 'not met'})")
    gate = ((records.get("gate") or {}).get("result") or {}).get("variants")
    if gate:
        passing = [name for name, v in gate.items() if v["passes"]]
        lines.append(f"bf16 gate (top-20 overlap >= {TARGETS['bf16_overlap']:.0%}): "
                     + (f"passed by {', '.join(passing)}" if passing else "not passed"))
    return lines


def summary_table(records: dict) -> str:
    lines = ["| stage | status | seconds (cap) | figures |", "| --- | --- | ---: | --- |"]
    for stage, record in records.items():
        seconds = f"{record.get('seconds', 0):.0f} ({record.get('cap_seconds', 0):.0f})"
        lines.append(f"| {stage} | {record['status']} | {seconds} | {figures(stage, record)} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="where the records and suite.log go (created)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on CPU: the check that the suite runs")
    parser.add_argument("--bundle", help="a folder made by --prepare (wheels installed, tokenizer artifact)")
    parser.add_argument("--prepare", metavar="DIR", help="gather the bundle into DIR (here, on CPU) and stop")
    parser.add_argument("--train-minutes", type=float, default=None,
                        help=f"budget of each training run (default 5; smoke {SMOKE_TRAIN_MINUTES})")
    parser.add_argument("--budget-minutes", type=float, default=None, help="the caps' total (default 9; smoke 2)")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, in order: {', '.join(STAGES)}")
    parser.add_argument("--cap", action="append", default=[], metavar="STAGE=SECONDS", help="another cap for a stage")
    parser.add_argument("--work", help="checkpoints and logs (default: a new temporary folder)")
    args = parser.parse_args(argv)
    if args.train_minutes is None:
        args.train_minutes = SMOKE_TRAIN_MINUTES if args.smoke else 5.0
    if args.prepare:
        return args
    if not args.out:
        parser.error("--out DIR is required (or --prepare DIR)")
    if not args.train_minutes > 0:
        parser.error(f"--train-minutes must be > 0, got {args.train_minutes}")
    args.stages = [s for s in args.stages.split(",") if s]
    if not args.stages or any(s not in STAGES for s in args.stages):
        parser.error(f"--stages: expected some of {', '.join(STAGES)}, got {args.stages}")
    caps = {}
    for item in args.cap:
        stage, _, seconds = item.partition("=")
        try:
            caps[stage] = float(seconds)
        except ValueError:
            parser.error(f"--cap {item!r}: expected STAGE=SECONDS, e.g. beam=90")
        if stage not in STAGES or caps[stage] <= 0:
            parser.error(f"--cap {item!r}: expected one of {', '.join(STAGES)} and seconds > 0")
    args.caps = caps
    if args.bundle and not (Path(args.bundle) / "MANIFEST.json").is_file():
        parser.error(f"--bundle {args.bundle}: no MANIFEST.json there; make it with --prepare {args.bundle}")
    if args.budget_minutes is None:
        args.budget_minutes = 2.0 if args.smoke else 9.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.prepare:
        return prepare(Path(args.prepare))
    import torch

    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: the suite measures a GPU; `--smoke` runs its stages on CPU")
    caps = plan_caps(args.stages, smoke=args.smoke, train_minutes=args.train_minutes,
                     budget_minutes=args.budget_minutes, overrides=args.caps)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work or tempfile.mkdtemp(prefix="genrec-gpu-suite-"))
    work.mkdir(parents=True, exist_ok=True)
    args.work = str(work)
    log = Log(out / "suite.log")
    from genrec.provenance import git_commit

    commit = git_commit()
    if commit == "unknown" and args.bundle:  # the GPU machine gets the files, not the repository
        commit = json.loads((Path(args.bundle) / "MANIFEST.json").read_text())["commit"] + " (the bundle's)"
    header = {"commit": commit, "date": time.strftime("%Y-%m-%d"), "smoke": args.smoke, "torch": torch.__version__,
              "python": sys.version.split()[0], "train_minutes": args.train_minutes, "caps": caps, "work": str(work),
              "command": " ".join(["gpu_suite.py", *(argv if argv is not None else sys.argv[1:])])}
    log(f"genrec GPU suite: {json.dumps(header)}")
    env = child_env(work)
    records: dict[str, dict] = {}
    start = time.perf_counter()
    for number, stage in enumerate(args.stages, 1):
        left = args.budget_minutes * 60 - (time.perf_counter() - start)
        log(f"\n[{number}/{len(args.stages)}] {stage} (cap {caps[stage]:.0f} s; "
            f"{left / 60:.1f} min of the budget left)")
        command = stage_command(stage, args, work, records)
        for stale in (work / f"{stage}.json", work / "junit.xml" if stage == "tests" else None):
            if stale is not None:  # a result left by an earlier run in the same --work is never read as this one's
                stale.unlink(missing_ok=True)
        if isinstance(command, str):
            record = {"stage": stage, "status": "skipped", "reason": command}
            log(f"{stage}: skipped: {command}")
        else:
            record = run_stage(stage, command, cap=caps[stage], log=log, env=env)
            record["result"] = stage_result(stage, work)
        records[stage] = record
        (out / f"{stage}.json").write_text(json.dumps({**header, **record}, indent=1) + "\n")
    table = summary_table(records)
    goals = targets(records)
    if args.smoke and goals:
        goals.insert(0, "smoke run (tiny models, a generated dataset, CPU): the goals below apply to the GPU run")
    log(f"\nsummary ({time.perf_counter() - start:.0f} s in all; records in {out})\n{table}\n")
    for line in goals:
        log(f"- {line}")
    summary = {**header, "seconds": round(time.perf_counter() - start, 1), "stages": records, "table": table,
               "targets": goals}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return 0 if all(r["status"] == "ok" for r in records.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
