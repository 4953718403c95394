"""TIGER-size Beauty and SASRec trained side by side on one wall-clock budget, tested, and their speed measured.

The train stage of ``benchmarks/gpu_suite.py``, which runs it in its own process under a time cap; it runs alone too:

    python benchmarks/gpu_train.py --work DIR [--train-minutes 5] [--bundle .gpu-bundle] [--smoke]

Two ``train.py fit`` processes start together on the one device: TIGER (``configs/base/gpu.yaml`` +
``configs/tiger/beauty.yaml``) and SASRec (``configs/base/baseline.yaml`` + ``configs/sasrec/beauty.yaml``), each
with ``genrec.training.TimeBudget`` choosing its epochs to end within ``--train-minutes`` (a hard ``max_time``
stop 30 s later behind it), then tested on all users (TIGER by constrained beam search) with a run record. Both
share the GPU, so each one's samples/s is measured beside the other. Afterwards the FLOPs of one training step
per sample are counted (``torch.utils.flop_counter`` on a training batch of the run's batch size, eager) and
the matrix-product peak is measured on the device (bf16 and fp32); MFU = samples/s x FLOPs per sample / peak in
the run's precision (TIGER bf16-mixed, SASRec fp32), beside the datasheet peak where the device is known.
``--smoke``: both on a tiny generated walk dataset with tiny models, on CPU. Writes ``DIR/train.json`` after each
step, so a run killed at its cap leaves what it had.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the bare GPU machine has no installed genrec: the checkout's is the one

from gpu_bundle import tokenizer_path  # noqa: E402 -- beside this file

NOMINAL = {"H100": {"bf16": 989e12, "fp32": 67e12}, "H200": {"bf16": 989e12, "fp32": 67e12}}  # dense, datasheet


def smoke_walk(work: Path) -> tuple[Path, Path]:
    """A tiny dataset whose next item is the last one plus 1 (mod 64), and its 4 x 4 x 4 (+1) semantic IDs."""
    import torch

    from genrec.tokenizer.artifact import save_tokenizer

    items, users = 64, 256
    folder = work / "smoke-walk"
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"{u + 1} " + " ".join(str((u * 7 + t) % items + 1) for t in range(6 + u % 4)) for u in range(users)]
    (folder / "sequences.txt").write_text("\n".join(lines) + "\n")
    i = torch.arange(items)
    codes = torch.stack([i // 16, (i // 4) % 4, i % 4, torch.zeros_like(i)], dim=1)
    tokenizer = save_tokenizer(work / "smoke-walk-tokenizer", codes=codes, level_sizes=(4, 4, 4, 1), codebooks=None,
                               config={"smoke": True}, metrics={}, fingerprint="smoke", plot=False)
    return folder, Path(tokenizer)


def train_commands(args: argparse.Namespace, work: Path) -> dict[str, list[str]]:
    """The ``train.py fit`` commands of the TIGER and SASRec runs (both on the same budget)."""
    seconds = round(args.train_minutes * 60 + 30)  # a hard stop behind TimeBudget's plan, before the stage cap
    hard_stop = f"00:{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
    runs = {"tiger": ["configs/base/gpu.yaml", "configs/tiger/beauty.yaml"],
            "sasrec": ["configs/base/baseline.yaml", "configs/sasrec/beauty.yaml"]}
    commands = {}
    for name, configs in runs.items():
        commands[name] = [
            sys.executable, "train.py", "fit", *[a for c in configs for a in ("--config", c)],
            "--trainer.logger=false", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
            f"--trainer.default_root_dir={work / 'runs' / name}", f"--trainer.max_time={hard_stop}",
            "--trainer.callbacks+=genrec.training.TimeBudget", f"--trainer.callbacks.minutes={args.train_minutes}",
            f"--trainer.callbacks.report={work / f'{name}-budget.json'}",
        ]
    if args.smoke:
        dataset, tokenizer = smoke_walk(work)
        data = [f"--data.init_args.dataset={dataset}", "--data.init_args.max_len=5", "--data.init_args.batch_size=32",
                "--data.init_args.eval_batch_size=64", "--trainer.accelerator=cpu", "--trainer.num_sanity_val_steps=0"]
        commands["tiger"] += [
            *data, f"--data.init_args.tokenizer={tokenizer}", "--data.init_args.tokenizer_config=null",
            "--model.init_args.arch.d_model=32", "--model.init_args.arch.encoder_layers=2",
            "--model.init_args.arch.decoder_layers=2", "--model.init_args.arch.num_heads=2",
            "--model.init_args.arch.d_kv=16", "--model.init_args.arch.d_ff=64", "--model.init_args.compile=false",
            "--model.init_args.warmup_steps=10", "--trainer.check_val_every_n_epoch=2", "--examples=1"]
        commands["sasrec"] += [*data, "--model.init_args.arch.d_model=16", "--trainer.max_epochs=8"]
    else:
        tokenizer = tokenizer_path(args.bundle)
        if tokenizer:
            commands["tiger"].append(f"--data.init_args.tokenizer={tokenizer}")
        commands["sasrec"].append("--data.init_args.on_device=true")
    return commands


def _pump(name: str, process: subprocess.Popen, ended: dict) -> None:
    """Prints a run's output with its name in front, and notes when it ended."""
    for line in process.stdout:
        print(f"[{name}] {line.rstrip()}", flush=True)
    process.wait()
    ended[name] = time.perf_counter()


def matmul_peak(device, dtype) -> float:
    """FLOP/s of a large matrix product on ``device`` in ``dtype`` (mean of 10 after 3 warm-ups)."""
    import torch

    n = 8192 if device.type == "cuda" else 256
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    sync()
    return 10 * 2 * n**3 / (time.perf_counter() - start)


def training_flops(name: str, checkpoint: Path, device) -> dict:
    """FLOPs of a training step (forward and backward) per sample, counted in eager mode on one training batch
    of the run's own batch size (TIGER: a history window; SASRec: a user's row of positions)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    hparams = torch.load(checkpoint, map_location="cpu", weights_only=True)["datamodule_hyper_parameters"]
    hparams = {k: v for k, v in hparams.items() if not k.startswith("_")}
    if name == "tiger":
        from genrec.seq2seq.data import SemanticIdData as Data
        from genrec.seq2seq.module import GenerativeRecommender as Module
    else:
        from genrec.baselines.data import ItemSequenceData as Data
        from genrec.baselines.sasrec import SASRecRecommender as Module
    data = Data(**hparams)
    data.setup("fit")
    model = Module.load_from_checkpoint(checkpoint, map_location=device, weights_only=True).train()
    train = data.parts["train"]
    rows = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[: hparams["batch_size"]]
    batch = {k: v.to(device) for k, v in train[rows.tolist()].items()}
    with FlopCounterMode(display=False) as counter:
        loss = model.training_losses(batch)["loss"] if name == "tiger" else model(batch["input"], batch["labels"])
        loss.backward()
    width = batch["input_ids" if name == "tiger" else "input"].shape[1]
    return {"flops_per_sample": counter.get_total_flops() / len(rows), "flop_batch": len(rows),
            "flop_batch_width": int(width)}


def run(args: argparse.Namespace) -> int:
    """Runs TIGER and SASRec side by side on one budget, then counts their FLOPs; writes ``work/train.json``."""
    work = Path(args.work)
    out = work / "train.json"
    for name in ("tiger", "sasrec"):  # what an earlier run in the same folder left is never read as this one's
        for stale in (work / "runs" / name, work / f"records-{name}"):
            shutil.rmtree(stale, ignore_errors=True)
        (work / f"{name}-budget.json").unlink(missing_ok=True)
    out.unlink(missing_ok=True)
    commands = train_commands(args, work)
    env = {**os.environ}
    record: dict = {"budget_minutes": args.train_minutes, "side_by_side": "both runs share the device", "runs": {}}
    start = time.perf_counter()
    processes = {}
    for name, command in commands.items():
        print(f"starting {name}: {' '.join(command)}", flush=True)
        env["GENREC_RECORDS"] = str(work / f"records-{name}")
        processes[name] = subprocess.Popen(command, cwd=ROOT, env=dict(env), stdout=subprocess.PIPE,
                                           stderr=subprocess.STDOUT, text=True, errors="replace")
    ended: dict[str, float] = {}
    pumps = [threading.Thread(target=_pump, args=(*item, ended), daemon=True) for item in processes.items()]
    for pump in pumps:
        pump.start()
    for pump, (name, process) in zip(pumps, processes.items()):
        pump.join()
        run = {"command": " ".join(commands[name]), "returncode": process.returncode,
               "wall_seconds": round(ended[name] - start, 1)}
        budget = work / f"{name}-budget.json"
        run["time_budget"] = json.loads(budget.read_text()) if budget.is_file() else None
        records = sorted((work / f"records-{name}").glob("*.json"))
        run["record"] = json.loads(records[-1].read_text()) if records else None
        folder = work / "runs" / name / "checkpoints"
        found = sorted(folder.glob("best-*.ckpt")) or sorted(folder.glob("last.ckpt"))
        run["checkpoint"] = str(found[-1]) if found else None
        record["runs"][name] = run
        print(f"{name} finished: exit {process.returncode}, {run['wall_seconds']} s", flush=True)
        out.write_text(json.dumps(record, indent=1) + "\n")
    _add_flops(record, smoke=args.smoke)
    out.write_text(json.dumps(record, indent=1) + "\n")
    return 0 if all(run["returncode"] == 0 for run in record["runs"].values()) else 1


def _add_flops(record: dict, *, smoke: bool) -> None:
    """Adds FLOPs per sample, the measured matrix-product peaks and MFU (utilisation of that peak) to each run."""
    import torch

    from genrec.provenance import device_name

    device = torch.device("cpu" if smoke else "cuda")
    print("counting FLOPs and measuring the matrix-product peak", flush=True)
    peaks = {"bf16": matmul_peak(device, torch.bfloat16), "fp32": matmul_peak(device, torch.float32)}
    name = device_name(device)
    record["device"] = name
    record["peak_flops"] = {k: round(v / 1e12, 2) for k, v in peaks.items()}  # TFLOP/s
    nominal = next((v for k, v in NOMINAL.items() if k in name), None)
    for run_name, run in record["runs"].items():
        if not run.get("checkpoint"):
            continue
        run.update(training_flops(run_name, Path(run["checkpoint"]), device))
        speed = (run.get("time_budget") or {}).get("samples_per_s")
        precision = "bf16" if run_name == "tiger" else "fp32"  # gpu.yaml trains in bf16-mixed, baseline.yaml in fp32
        if speed:
            achieved = speed * run["flops_per_sample"]
            run["achieved_tflops"] = round(achieved / 1e12, 3)
            run["mfu"] = round(achieved / peaks[precision], 5)
            run["mfu_precision"] = precision
            if nominal:
                run["mfu_of_datasheet"] = round(achieved / nominal[precision], 5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", required=True, help="where the runs, their records and train.json go")
    parser.add_argument("--train-minutes", type=float, default=5.0, help="the budget of each run")
    parser.add_argument("--bundle", help="a folder made by gpu_suite.py --prepare (its tokenizer artifact)")
    parser.add_argument("--smoke", action="store_true", help="tiny models on a generated walk dataset, on CPU")
    args = parser.parse_args(argv)
    if not args.train_minutes > 0:
        parser.error(f"--train-minutes must be > 0, got {args.train_minutes}")
    Path(args.work).mkdir(parents=True, exist_ok=True)
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
