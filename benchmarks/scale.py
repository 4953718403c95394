"""How every stage's cost grows with the data: wall time and peak memory per stage at 10^5, 10^6 and 10^7
interactions over catalogues of about 10^4, 10^5 and 10^6 items (synthetic data, ``genrec.data.synth``).

Each size runs in a fresh process, stage after stage, as a run of ``train.py`` would: generate the dataset (not a
genrec stage, timed for the record), load and split it, co-occurrence features, fusion with the generated content
features (320 + 64 = 384 wide), residual k-means 3 x 256 through its Lightning module (artifact written), the RQ-VAE
for a fixed number of steps (artifact written), the prefix index, the TIGER DataModule, training for a fixed number
of steps (samples/s), a checkpoint, and constrained beam search (users/s) on the whole catalogue and, with the same
model, on a 12,101-item part of it (Beauty's size). Peak memory is the process's resident high-water mark within the
stage (reset between stages through ``/proc/self/clear_refs``).

It prints one line per stage, the growth exponent of every stage between sizes (``log(cost ratio) / log(size
ratio)``: time for the stages that do work proportional to the data, time per sample or per user for the fixed-work
ones), whether each target of issue 14 is met, and writes ``<out>/scale-<date>.json`` and ``.png``.

Usage (about 25 minutes on 2 CPU cores, 10^7 taking most)::

    python benchmarks/scale.py --sizes 1e5 1e6 1e7
    python benchmarks/scale.py --sizes 1e5 --steps 10   # a quick check
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: import this checkout's genrec
    sys.path.insert(0, str(ROOT))

log = logging.getLogger("scale")


@dataclass(frozen=True)
class Size:
    users: int
    items: int
    interactions: int


SIZES = {
    "1e5": Size(users=10_000, items=10_000, interactions=100_000),
    "1e6": Size(users=100_000, items=100_000, interactions=1_000_000),
    "1e7": Size(users=1_000_000, items=1_000_000, interactions=10_000_000),
}
BEAUTY_ITEMS = 12_101
CONTENT_DIM, COOC_DIM = 320, 64
FIXED_WORK = {"rq_vae": "steps", "train": "samples", "beam": "users", "beam_12101": "users"}
"""Stages that do a fixed amount of work at every size: their exponent is that of the cost per unit."""
MEMORY_LIMIT_GB = 24.0


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


class Stages:
    """Times stages and their peak resident memory; :meth:`stage` is the context manager for one."""

    def __init__(self) -> None:
        self.records: dict[str, dict] = {}

    @contextlib.contextmanager
    def stage(self, name: str, **facts):
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        except OSError:
            log.warning("cannot reset the peak RSS: stage peaks include the stages before")
        before = _status_kb("VmRSS")
        log.info("%s ...", name)
        start = time.perf_counter()
        record = {"seconds": None, **facts}
        yield record
        record["seconds"] = round(time.perf_counter() - start, 3)
        record["peak_rss_gb"] = round(_status_kb("VmHWM") / 2**20, 3)
        record["rss_before_gb"] = round(before / 2**20, 3)
        self.records[name] = record
        extra = {k: v for k, v in record.items() if k not in ("seconds", "peak_rss_gb", "rss_before_gb")}
        log.info("%s: %.1f s, peak %.2f GB %s", name, record["seconds"], record["peak_rss_gb"],
                 json.dumps(extra) if extra else "")


def _step_clock(warmup: int):
    """A Lightning callback that counts the samples of the training steps after the first ``warmup``;
    ``samples_per_second()`` says their rate."""
    import lightning.pytorch as pl

    class StepClock(pl.Callback):
        def __init__(self) -> None:
            self.samples, self.start = 0, None

        def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
            if trainer.global_step == warmup:
                self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            if self.start is not None:
                self.samples += len(batch["target"])

        def samples_per_second(self) -> float:
            return self.samples / (time.perf_counter() - self.start)

    return StepClock()


def _trainer(**kwargs):
    import lightning.pytorch as pl

    return pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, **kwargs)


def _beam(model, part, users: int, batch_size: int) -> float:
    """Users/s of constrained beam search over the first ``users`` rows of ``part``, after one untimed batch (the
    first call at a new batch shape runs several times slower on CPU)."""
    import torch

    with torch.no_grad():
        warm = part[list(range(min(batch_size, len(part))))]
        model.recommend(warm["input_ids"], warm["attention_mask"], top_k=10)
    done, start = 0, time.perf_counter()
    with torch.no_grad():
        for begin in range(0, min(users, len(part)), batch_size):
            batch = part[list(range(begin, min(begin + batch_size, users, len(part))))]
            model.recommend(batch["input_ids"], batch["attention_mask"], top_k=10)
            done += len(batch["target"])
    return done / (time.perf_counter() - start)


def run_size(name: str, work: Path, *, steps: int, rqvae_steps: int, beam_users: int, threads: int) -> dict:
    """Every stage at one size, in this process; returns the record of each stage."""
    import lightning.pytorch as pl
    import numpy as np
    import torch

    from genrec.data import leave_one_out, load_dataset
    from genrec.data.dataset import _load_cached
    from genrec.data.synth import FEATURES_FILE, SynthSpec, write_synthetic
    from genrec.decoding import PrefixIndex
    from genrec.features import CooccurrenceFeatures, NpyFeatures, fuse_features
    from genrec.features.cooccurrence import cooccurrence_embeddings
    from genrec.seq2seq.catalogue import Catalogue
    from genrec.seq2seq.data import SemanticIdData
    from genrec.seq2seq.module import GenerativeRecommender, T5Architecture
    from genrec.tokenizer.artifact import load_tokenizer
    from genrec.tokenizer.datamodule import ItemFeatures
    from genrec.tokenizer.lightning import RQKMeansTokenizer, RQVAETokenizer

    torch.set_num_threads(threads)
    size = SIZES[name]
    path = work / name
    stages = Stages()
    spec = SynthSpec(users=size.users, items=size.items, interactions=size.interactions, dim=CONTENT_DIM, seed=0)
    with stages.stage("generate") as r:
        r.update(write_synthetic(spec, path))
        del r["spec"]

    with stages.stage("reference", what="sort of N keys, N random rows of an items x 16 table, dict of items") as r:
        # Work that is linear by construction, shaped like the stages' (sorting the interactions, looking rows of
        # an item table up at random, hashing item ids): the machine's own growth for linear work, against which
        # the stages' exponents are read. An item table leaves the 32 MB L3 cache between 10^5 and 10^6 items.
        rng = np.random.default_rng(0)
        np.sort(rng.integers(0, 2**62, size=size.interactions))
        table = torch.randn(size.items, 16)
        for start in range(0, size.interactions, 1 << 20):
            table[torch.randint(size.items, (min(1 << 20, size.interactions - start),))].sum()
        {int(i): 1 for i in rng.integers(0, size.items, size=size.items)}
        del table

    with stages.stage("load_split") as r:
        dataset = load_dataset(path)
        split = leave_one_out(dataset, max_len=20)
        r.update(users=dataset.n_users, items=dataset.n_items, interactions=dataset.n_interactions,
                 train_samples=len(split.train))
    n_items = dataset.n_items
    del split

    with stages.stage("cooccurrence", dim=COOC_DIM):
        cooc = cooccurrence_embeddings(path, dim=COOC_DIM)
    with stages.stage("fusion") as r:
        sources = [NpyFeatures(path=str(path / FEATURES_FILE)), CooccurrenceFeatures(dim=COOC_DIM)]
        fused = fuse_features([sources[0].load(path), cooc], sources)
        r["shape"] = list(fused.shape)
    del cooc

    artifacts = {}
    for method, cls, batch_size, limit in (("rq_kmeans", RQKMeansTokenizer, None, {"max_epochs": 1}),
                                           ("rq_vae", RQVAETokenizer, 1024, {"max_steps": rqvae_steps})):
        artifacts[method] = work / f"{name}-{method}"
        with stages.stage(method, **({"steps": rqvae_steps} if method == "rq_vae" else {})) as r:
            pl.seed_everything(0, verbose=False)
            module = cls(output_dir=str(artifacts[method]), levels=3, codebook_size=256)
            _trainer(**limit).fit(module, datamodule=ItemFeatures(dataset=str(path), features=fused,
                                                                        batch_size=batch_size))
            metrics = json.loads((artifacts[method] / "metrics.json").read_text())
            r.update(level_sizes=metrics["level_sizes"], collision_rate=round(metrics["collision_rate"], 4),
                     reconstruction_error=round(metrics["reconstruction_error"], 4))
    del fused

    ids = load_tokenizer(artifacts["rq_kmeans"])
    with stages.stage("prefix_index") as r:
        index = PrefixIndex(ids.codes, ids.level_sizes)
        r.update(memory_mb=round(index.memory_bytes / 2**20, 1), layouts=index.layouts, nodes=index.n_nodes,
                 lookup_ms=[None if s is None else {k: round(v * 1e3, 3) for k, v in s.items()}
                            for s in index.lookup_seconds])
    del index

    _load_cached.cache_clear()  # the DataModule loads the dataset as a run would, not from this process's cache
    with stages.stage("datamodule") as r:
        data = SemanticIdData(dataset=str(path), tokenizer=str(artifacts["rq_kmeans"]), max_len=20,
                              batch_size=256, eval_batch_size=256)
        data.setup("fit")
        r.update(stored_mb=round(sum(t.numel() * t.element_size() for p in data.parts.values()
                                     for t in p.tensors.values()) / 2**20, 1),
                 rows={k: len(v) for k, v in data.parts.items()})

    pl.seed_everything(0, verbose=False)
    arch = T5Architecture(d_model=64, encoder_layers=2, decoder_layers=2, num_heads=4, d_kv=16, d_ff=256, dropout=0.0)
    model = GenerativeRecommender(level_sizes=data.level_sizes, n_items=n_items, max_len=20, arch=arch, lr=3e-3,
                                  warmup_steps=10, beam_width=20, top_k=20)
    clock = _step_clock(warmup=min(5, steps - 1))
    trainer = _trainer(max_steps=steps, limit_val_batches=0, num_sanity_val_steps=0, callbacks=[clock])
    with stages.stage("train", steps=steps, batch_size=256) as r:
        trainer.fit(model, datamodule=data)
        r["samples"] = clock.samples
        r["samples_per_s"] = round(clock.samples_per_second(), 1)

    with stages.stage("checkpoint") as r:
        checkpoint = work / f"{name}.ckpt"
        trainer.save_checkpoint(checkpoint)
        r["size_mb"] = round(checkpoint.stat().st_size / 2**20, 2)

    model.eval()
    test = data.parts["test"]
    with stages.stage("beam", users=beam_users, catalogue=n_items) as r:
        r["users_per_s"] = round(_beam(model, test, beam_users, 256), 1)
    if n_items > BEAUTY_ITEMS:
        # The same model and users, decoding into the first 12,101 items only (Beauty's catalogue size).
        model.set_catalogue(Catalogue(item_codes=ids.codes[:BEAUTY_ITEMS]))
        with stages.stage("beam_12101", users=beam_users, catalogue=BEAUTY_ITEMS) as r:
            r["users_per_s"] = round(_beam(model, test, beam_users, 256), 1)
    return stages.records


def exponents(results: dict[str, dict]) -> dict[str, dict[str, float]]:
    """Per stage, the growth exponent between consecutive sizes (module docstring)."""
    names = [n for n in SIZES if n in results]
    out: dict[str, dict[str, float]] = {}
    for a, b in zip(names, names[1:]):
        ratio = SIZES[b].interactions / SIZES[a].interactions
        for stage, ra in results[a].items():
            rb = results[b].get(stage)
            if rb is None or stage in ("generate",):
                continue
            if stage in ("train",):
                cost_a, cost_b = 1 / ra["samples_per_s"], 1 / rb["samples_per_s"]
            elif stage.startswith("beam"):
                cost_a, cost_b = 1 / ra["users_per_s"], 1 / rb["users_per_s"]
            else:
                cost_a, cost_b = ra["seconds"], rb["seconds"]
            out.setdefault(stage, {})[f"{a}->{b}"] = round(math.log(cost_b / cost_a) / math.log(ratio), 3)
            grow_a = max(ra["peak_rss_gb"] - ra["rss_before_gb"], 0.01)
            grow_b = max(rb["peak_rss_gb"] - rb["rss_before_gb"], 0.01)
            out[stage][f"{a}->{b} memory"] = round(math.log(grow_b / grow_a) / math.log(ratio), 3)
    return out


def targets(results: dict[str, dict], growth: dict[str, dict[str, float]]) -> dict[str, dict]:
    """Issue 14's targets and whether each is met."""
    out: dict[str, dict] = {}
    time_exponents = {}
    for stage, e in growth.items():
        for k, v in e.items():
            if not k.endswith("memory"):
                time_exponents[stage] = max(v, time_exponents.get(stage, v))
    stage_exponents = {s: v for s, v in time_exponents.items() if s != "reference"}
    worst = max(stage_exponents.items(), key=lambda kv: kv[1]) if stage_exponents else None
    if worst is not None:
        over = sorted(s for s, v in stage_exponents.items() if v > 1.1)
        out["every stage grows at most linearly (exponent <= 1.1)"] = {
            "met": worst[1] <= 1.1, "worst": {"stage": worst[0], "exponent": worst[1]}, "over": over}
        reference = growth.get("reference", {})
        if reference:
            # The same test against the machine's growth for linear work between the same sizes.
            beyond = sorted(f"{s} {k}" for s, e in growth.items() if s != "reference" for k, v in e.items()
                            if not k.endswith("memory") and k in reference and v > max(1.1, reference[k]))
            out["every stage grows no faster than linear work on this machine"] = {
                "met": not beyond, "reference": reference, "beyond": beyond}
    if "1e7" in results:
        peak = max(r["peak_rss_gb"] for r in results["1e7"].values())
        out["10^7 / 10^6 completes within 24 GB"] = {"met": peak <= MEMORY_LIMIT_GB, "peak_gb": peak}
        beam, small = results["1e7"].get("beam"), results["1e7"].get("beam_12101")
        if beam and small:
            ratio = beam["users_per_s"] / small["users_per_s"]
            out["beam on 10^6 items >= 50 % of users/s on 12,101"] = {"met": ratio >= 0.5, "ratio": round(ratio, 3)}
        km = results["1e7"]["rq_kmeans"]["seconds"]
        out["residual k-means 10^6 x 384 <= 10 min"] = {"met": km <= 600, "seconds": km}
    return out


def plot(results: dict[str, dict], path: Path) -> None:
    from matplotlib.figure import Figure

    names = [n for n in SIZES if n in results]
    x = [SIZES[n].interactions for n in names]
    fig = Figure(figsize=(15, 4.5), layout="constrained")
    wall, memory, rates = fig.subplots(1, 3)
    for stage in results[names[0]]:
        if stage in FIXED_WORK:
            continue
        wall.plot(x, [results[n][stage]["seconds"] for n in names], marker="o", label=stage)
        memory.plot(x, [results[n][stage]["peak_rss_gb"] for n in names], marker="o", label=stage)
    if len(x) > 1:
        wall.plot(x, [results[names[0]]["load_split"]["seconds"] * v / x[0] for v in x], "k:", label="linear")
    for stage, key in (("train", "samples_per_s"), ("beam", "users_per_s"), ("beam_12101", "users_per_s")):
        pts = [(v, results[n][stage][key]) for v, n in zip(x, names) if stage in results[n]]
        if pts:
            rates.plot(*zip(*pts), marker="o", label=f"{stage} ({key.replace('_per_s', '/s')})")
    for ax, title in ((wall, "wall seconds per stage"), (memory, "peak resident memory per stage (GB)"),
                      (rates, "throughput (fixed work per size)")):
        ax.set_xscale("log")
        ax.set_xlabel("interactions (items = interactions / 10)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    wall.set_yscale("log")
    memory.set_yscale("log")
    memory.axhline(MEMORY_LIMIT_GB, color="r", ls="--", lw=1)
    rates.set_yscale("log")
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--work", default="/tmp/genrec-scale", help="folder for the datasets and artifacts")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "records" / "scale"))
    parser.add_argument("--tag", default="", help="suffix of the record's file name")
    parser.add_argument("--steps", type=int, default=40, help="training steps (the first 5 are not timed)")
    parser.add_argument("--rqvae-steps", type=int, default=200)
    parser.add_argument("--beam-users", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one size in this process, print JSON
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero",
                  "genrec.tokenizer.export"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.one:
        records = run_size(args.one, work, steps=args.steps, rqvae_steps=args.rqvae_steps,
                           beam_users=args.beam_users, threads=args.threads)
        (work / f"{args.one}.json").write_text(json.dumps(records, indent=1))
        return 0

    from genrec.provenance import provenance

    results = {}
    for name in args.sizes:
        cmd = [sys.executable, __file__, "--one", name, "--work", str(work), "--steps", str(args.steps),
               "--rqvae-steps", str(args.rqvae_steps), "--beam-users", str(args.beam_users),
               "--threads", str(args.threads)]
        log.info("size %s: %s", name, SIZES[name])
        start = time.perf_counter()
        done = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False)
        if done.returncode != 0:
            log.error("size %s failed (exit %d); the sizes before it are kept", name, done.returncode)
            break
        results[name] = json.loads((work / f"{name}.json").read_text())
        log.info("size %s done in %.0f s", name, time.perf_counter() - start)
    if not results:
        return 1
    growth = exponents(results)
    met = targets(results, growth)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"scale-{date.today().strftime('%Y%m%d')}{args.tag}"
    record = {**provenance(), "sizes": {n: vars(SIZES[n]) for n in results}, "steps": args.steps,
              "rqvae_steps": args.rqvae_steps, "beam_users": args.beam_users, "threads": args.threads,
              "results": results, "exponents": growth, "targets": met}
    (out / f"{stem}.json").write_text(json.dumps(record, indent=1) + "\n")
    plot(results, out / f"{stem}.png")
    print(f"\n{'stage':<14}" + "".join(f"{n + ' s':>10}{n + ' GB':>9}" for n in results))
    for stage in results[next(iter(results))]:
        cells = "".join(f"{results[n][stage]['seconds']:>10.2f}{results[n][stage]['peak_rss_gb']:>9.2f}"
                        if stage in results[n] else f"{'':>19}" for n in results)
        print(f"{stage:<14}{cells}")
    print("\nexponents:", json.dumps(growth, indent=1))
    print("targets:", json.dumps(met, indent=1))
    print(f"wrote {out / stem}.json and .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
