"""Training samples/s and evaluation users/s of the generative recommender for a config, on real data.

Builds the config's model and data through genrec's CLI (no fit), then times optimiser steps on real training
batches and constrained beam search on real validation batches, after warm-up. Prints one JSON line.

    python benchmarks/seq2seq_speed.py --config configs/base/cpu.yaml --config configs/tiger/beauty-cpu.yaml \
        [--steps 20] [--eval-batches 4] [-- --model.encoder.pool_items=true ...]

Training steps and decoding go through the model's own ``training_losses`` and ``recommend_batch``, so whatever the
config's history encoder reads (item indices, modalities, content) is timed too.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from contextlib import nullcontext

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", action="append", required=True, help="config file(s), in order (base first)")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps (after 3 warm-up steps)")
    parser.add_argument("--eval-batches", type=int, default=4, help="timed validation batches (after 1 warm-up)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bf16", action="store_true",
                        help="autocast training to bfloat16 (decoding stays float32, GenerativeRecommender.recommend_batch)")
    args, overrides = parser.parse_known_args()  # the rest: CLI overrides, e.g. --data.init_args.batch_size=512
    args.overrides = [o for o in overrides if o != "--"]

    from genrec.cli import main as cli_main

    configs = [a for path in args.config for a in ("--config", path)]
    cli = cli_main([*configs, "--trainer.logger=false", *args.overrides], run=False)
    model, data = cli.model, cli.datamodule
    data.setup("fit")
    model.set_catalogue(data.catalogue)
    device = torch.device(args.device)
    model.to(device)
    model.index = model.index.to(device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if args.bf16 else nullcontext()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    batches = iter(data.train_dataloader())
    model.train()

    def train_step() -> int:
        batch = {k: v.to(device, non_blocking=True) for k, v in next(batches).items()}
        with amp:
            loss = model.training_losses(batch)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return len(batch["labels"])

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(3):
        train_step()
    sync()
    start, samples = time.perf_counter(), 0
    for _ in range(args.steps):
        samples += train_step()
    sync()
    train_seconds = time.perf_counter() - start

    model.eval()
    loader = iter(data.val_dataloader())
    eval_batches = [next(loader) for _ in range(args.eval_batches + 1)]
    amp_dtype = torch.bfloat16 if args.bf16 else None

    def decode(batch: dict) -> None:
        with torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext():
            model.recommend_batch({k: v.to(device) for k, v in batch.items()})

    decode(eval_batches[0])
    sync()
    start, users = time.perf_counter(), 0
    for batch in eval_batches[1:]:
        decode(batch)
        users += len(batch["target"])
    sync()
    eval_seconds = time.perf_counter() - start

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(json.dumps({
        "config": args.config,
        "overrides": args.overrides,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads, {platform.processor() or platform.machine()})",
        "commit": commit,
        "parameters": sum(p.numel() for p in model.model.parameters()),
        "train_batch_size": data.hparams.batch_size,
        "train_samples_per_s": round(samples / train_seconds, 1),
        "train_steps_per_epoch": len(data.train_dataloader()),
        "est_epoch_seconds": round(len(data.parts["train"]) / (samples / train_seconds), 1),
        "eval_users_per_s": round(users / eval_seconds, 1),
        "est_full_eval_seconds": round(len(data.parts["valid"]) / (users / eval_seconds), 1),
        "bf16": args.bf16,
    }))


if __name__ == "__main__":
    main()
