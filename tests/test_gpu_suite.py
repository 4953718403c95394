"""The GPU suite (benchmarks/gpu_suite.py) runs all its stages on CPU with tiny sizes, records what each measured,
survives a stage that fails or runs out of time, refuses bad input, and its bundle fits what travels to the GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from genrec.tokenizer.artifact import save_tokenizer
from tests.conftest import ROOT, load_benchmark

suite = load_benchmark("gpu_suite")
bundle = load_benchmark("gpu_bundle")


def _run_suite(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "benchmarks/gpu_suite.py", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _running(pid: int) -> bool:
    """Whether a process exists and is not a zombie (an orphan here may wait for a reaper that never comes)."""
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def test_the_smoke_suite_runs_every_stage_and_records_what_it_measured(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    start = time.perf_counter()
    done = _run_suite("--smoke", "--out", str(out), "--work", str(work))
    wall = time.perf_counter() - start
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["beam.json", "gate.json", "suite.log", "summary.json",
                                                     "tests.json", "train.json"]
    summary = json.loads((out / "summary.json").read_text())
    assert [s["status"] for s in summary["stages"].values()] == ["ok"] * 4 and summary["smoke"]
    assert summary["seconds"] < 125 and wall < 150  # the stages' caps add up to 2 minutes
    for stage in ("tests", "beam", "train", "gate"):
        record = json.loads((out / f"{stage}.json").read_text())
        assert record["stage"] == stage and record["commit"] and record["date"]
        assert record["seconds"] <= record["cap_seconds"]
        assert f"| {stage} | ok |" in summary["table"]
    assert "summary (" in done.stdout and summary["table"] in done.stdout  # printed at the end
    log = (out / "suite.log").read_text()
    assert "[beam] batch 8 done" in log and "[train] [tiger]" in log and "[train] [sasrec]" in log

    tests = summary["stages"]["tests"]["result"]
    assert tests["failed"] == 0 and tests["passed"] + tests["skipped"] >= 4  # the CUDA tests: skipped on CPU

    rows = summary["stages"]["beam"]["result"]["rows"]
    engine = [r for r in rows if r["method"] == "engine" and "users_per_s" in r]
    dtypes = ("fp32", "bf16", "bf16-fp32head")
    assert {(r["batch"], r["dtype"]) for r in engine} == {(b, d) for b in (8, 32) for d in dtypes}
    assert all(r["invalid"] == 0 and r["users_per_s"] > 0 and r["p90_ms"] >= r["p50_ms"] > 0 for r in engine)
    assert all(r["same_topk_as_hf_constrained"] == 1.0 for r in engine if r["dtype"] == "fp32")
    assert all(r["speedup_vs_hf_constrained"] > 0 for r in engine)
    hf = {(r["method"], r["dtype"]): r for r in rows if r["method"] != "engine"}
    assert set(hf) == {(m, d) for m in ("hf_constrained", "hf_free") for d in ("fp32", "bf16")}
    assert all(hf[("hf_constrained", d)]["invalid"] == 0 for d in ("fp32", "bf16"))
    assert [r["skipped"] for r in rows if r["mode"] == "graph"] == ["CUDA graphs need a CUDA device"] * 6

    train = summary["stages"]["train"]["result"]
    for name in ("tiger", "sasrec"):
        run = train["runs"][name]
        assert run["returncode"] == 0 and run["checkpoint"] and run["record"]["metrics"]["recall@10"] > 0.3
        budget = run["time_budget"]
        # The plan holds unless early stopping (or the hard stop behind the plan, on a slow machine) ends it first.
        assert 2 <= budget["epochs"] <= budget["planned_epochs"] and budget["samples_per_s"] > 0
        assert budget["stopped_by"] in ("budget", "max_epochs", "early_stopping", "max_time")
        assert (budget["epochs"] == budget["planned_epochs"]) == (budget["stopped_by"] in ("budget", "max_epochs"))
        assert run["flops_per_sample"] > 0 and 0 < run["mfu"] < 1
    assert train["runs"]["tiger"]["time_budget"]["train_seconds"] <= 60 * suite.SMOKE_TRAIN_MINUTES + 5
    assert set(train["peak_flops"]) == {"bf16", "fp32"}

    gate = summary["stages"]["gate"]["result"]
    assert gate["checkpoint"] == train["runs"]["tiger"]["checkpoint"] and gate["users"] == 32
    for variant in gate["variants"].values():
        assert 0 <= variant["min_topk_overlap"] <= variant["mean_topk_overlap"] <= 1
        assert variant["passes"] == (variant["mean_topk_overlap"] >= 0.99)
    assert 0 <= gate["hf_unconstrained_invalid"] <= 1
    assert any(line.startswith("bf16 gate") for line in summary["targets"])


def test_a_stage_that_fails_or_runs_out_of_time_is_recorded_and_the_next_one_runs(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    done = _run_suite("--smoke", "--stages", "beam,gate", "--cap", "beam=0.5", "--out", str(out), "--work", str(work),
                      timeout=120)
    assert done.returncode == 1
    beam, gate = (json.loads((out / f"{s}.json").read_text()) for s in ("beam", "gate"))
    assert beam["status"] == "timeout" and beam["seconds"] < 15 and beam["cap_seconds"] == 0.5
    assert gate["status"] == "skipped" and "no trained TIGER checkpoint" in gate["reason"]
    assert "| beam | timeout |" in done.stdout and "| gate | skipped |" in done.stdout

    log = suite.Log(tmp_path / "unit.log")
    # A stage's own children die with it (its process group), and a failure keeps the end of its output.
    sleeper = tmp_path / "child.pid"
    code = ("import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
            f" open({str(sleeper)!r}, 'w').write(str(p.pid)); time.sleep(60)")
    record = suite.run_stage("slow", [sys.executable, "-c", code], cap=3, log=log)
    assert record["status"] == "timeout" and record["seconds"] < 15
    time.sleep(0.5)
    assert not _running(int(sleeper.read_text()))
    record = suite.run_stage("bad", [sys.executable, "-c", "print('working'); raise SystemExit('broken: 3')"], cap=30,
                             log=log)
    assert record["status"] == "failed" and record["returncode"] == 1 and "broken: 3" in record["tail"]
    assert "  [bad] working" in (tmp_path / "unit.log").read_text()


@pytest.mark.parametrize(("args", "message"), [
    (["--smoke"], "--out DIR is required"),
    (["--smoke", "--out", "o", "--stages", "beam,nope"], "--stages: expected some of"),
    (["--smoke", "--out", "o", "--cap", "beam"], "expected STAGE=SECONDS"),
    (["--smoke", "--out", "o", "--cap", "beam=soon"], "expected STAGE=SECONDS"),
    (["--smoke", "--out", "o", "--cap", "other=3"], "expected one of tests, beam, train, gate"),
    (["--smoke", "--out", "o", "--train-minutes", "0"], "--train-minutes must be > 0"),
    (["--smoke", "--out", "o", "--bundle", "no-such-bundle"], "no MANIFEST.json there; make it with --prepare"),
])
def test_bad_arguments_are_refused_with_what_was_expected(args, message, capsys):
    with pytest.raises(SystemExit):
        suite.parse_args(args)
    assert message in capsys.readouterr().err


def test_caps_that_do_not_fit_the_budget_are_refused_and_a_gpu_run_needs_cuda():
    caps = suite.plan_caps(list(suite.STAGES), smoke=False, train_minutes=5, budget_minutes=9, overrides={})
    assert sum(caps.values()) <= 9 * 60 and caps["train"] == 5 * 60 + suite.TRAIN_MARGIN
    assert sum(suite.plan_caps(list(suite.STAGES), smoke=True, train_minutes=0.1, budget_minutes=2,
                               overrides={}).values()) <= 120
    with pytest.raises(SystemExit, match=r"add up to .* more than --budget-minutes 9"):
        suite.plan_caps(list(suite.STAGES), smoke=False, train_minutes=8, budget_minutes=9, overrides={})
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="no CUDA device here"):
            suite.main(["--out", "unused"])


def test_the_bundle_downloads_wheels_for_the_gpu_python_and_fits_with_the_tree(tmp_path, monkeypatch, capsys):
    command = bundle.pip_download_command({"jsonargparse": "4.53.0", "docstring_parser": "0.18.0"}, tmp_path)
    assert command[1:4] == ["-m", "pip", "download"] and "--no-deps" in command and "--only-binary=:all:" in command
    assert command[command.index("--python-version") + 1] == "3.12" and "manylinux_2_17_x86_64" in command
    assert command[-2:] == ["jsonargparse==4.53.0", "docstring_parser==0.18.0"]
    line = bundle.install_line(ROOT / ".gpu-bundle")
    assert line.startswith("python3 -m pip install -q --no-index --no-deps") and "--target /tmp/genrec-site" in line
    assert ".gpu-bundle/wheels/*.whl && export PYTHONPATH=/tmp/genrec-site && python3 benchmarks/gpu_suite.py " \
           "--bundle .gpu-bundle --out $OUT/suite" in line
    with pytest.raises(SystemExit, match=r"come to 65.0 MiB, over the 64 MiB"):
        bundle.check_size(40 * 2**20, 25 * 2**20)
    tree = bundle.tree_bytes(tmp_path)
    assert tree is None or 0 < tree < bundle.TREE_LIMIT  # the checkout alone travels

    # prepare() end to end, with pip's download stood in for (no network in tests) and the artifact already there.
    def fake_download(versions, dest):
        names = [f"{name}-{version}-py3-none-any.whl" for name, version in versions.items()]
        return [sys.executable, "-c", f"import os; os.makedirs({str(dest)!r}); "
                                      f"[open(os.path.join({str(dest)!r}, n), 'w').write('w') for n in {names!r}]"]

    monkeypatch.setattr(bundle, "pip_download_command", fake_download)
    folder = tmp_path / "bundle"
    codes = torch.stack([torch.arange(12) // 4, torch.arange(12) % 4, torch.zeros(12, dtype=torch.long)], dim=1)
    save_tokenizer(folder / bundle.TOKENIZER, codes=codes, level_sizes=(3, 4, 1), codebooks=None, config={},
                   metrics={}, fingerprint="test", plot=False)
    assert bundle.prepare(folder) == 0
    manifest = json.loads((folder / "MANIFEST.json").read_text())
    assert set(manifest["wheels"]) == set(bundle.WHEELS) and manifest["target"]["python"] == "3.12"
    assert sorted(p.name for p in (folder / "wheels").iterdir()) == sorted(
        f"{n}-{v}-py3-none-any.whl" for n, v in manifest["wheels"].items())
    printed = capsys.readouterr().out
    assert "[3/3]" in printed and "MiB" in printed and printed.rstrip().endswith(manifest["install"])
    assert bundle.tokenizer_path(folder) == folder / bundle.TOKENIZER
    assert suite.parse_args(["--smoke", "--out", "o", "--bundle", str(folder)]).bundle == str(folder)
