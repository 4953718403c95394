"""Shared fixtures: tiny datasets in each supported format, the synthetic walk, and one model trained on it."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import NamedTuple

import pytest
import torch

from genrec.tokenizer.artifact import save_tokenizer

ROOT = Path(__file__).resolve().parents[1]
N_ITEMS = 27


def load_benchmark(name: str):
    """A script of ``benchmarks/`` as a module (they are scripts, not a package); its folder goes on the path so that
    the scripts that import one another find each other."""
    import importlib.util
    import sys

    if str(ROOT / "benchmarks") not in sys.path:
        sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_sequences_dataset(root: Path, lines: list[str], items: list[dict] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "sequences.txt").write_text("\n".join(lines) + "\n")
    if items is not None:
        (root / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in items))
    return root


def synthetic(tmp_path: Path, *, users: int = 108, length: int = 8) -> tuple[Path, Path]:
    """Users walk the catalogue in steps of +1 (mod 27) from different starts: the next item is a function of the
    last one. Codes are the base-3 digits of the item index, plus a constant collision level."""
    lines = [f"{u + 1} " + " ".join(str((u + t) % N_ITEMS + 1) for t in range(length)) for u in range(users)]
    dataset = write_sequences_dataset(tmp_path / "walk", lines)
    i = torch.arange(N_ITEMS)
    codes = torch.stack([i // 9, (i // 3) % 3, i % 3, torch.zeros_like(i)], dim=1)
    tokenizer = save_tokenizer(
        tmp_path / "walk-tokenizer", codes=codes, level_sizes=(3, 3, 3, 1), codebooks=None, config={"synthetic": True},
        metrics={}, fingerprint="synthetic", plot=False,
    )
    return dataset, tokenizer


def cli_args(dataset: Path, tokenizer: Path, out: Path, *extra: str) -> list[str]:
    """A tiny TIGER on the walk through the real CLI, quiet and on CPU; ``extra`` overrides."""
    return [
        "--model=genrec.seq2seq.module.GenerativeRecommender",
        "--model.arch.d_model=32", "--model.arch.encoder_layers=2", "--model.arch.decoder_layers=2",
        "--model.arch.num_heads=2", "--model.arch.d_kv=16", "--model.arch.d_ff=64", "--model.arch.dropout=0.0",
        "--model.lr=0.005", "--model.warmup_steps=20", "--model.beam_width=20", "--model.top_k=20",
        "--data=genrec.seq2seq.data.SemanticIdData",
        f"--data.dataset={dataset}", f"--data.tokenizer={tokenizer}", "--data.max_len=5",
        "--data.batch_size=64", "--data.eval_batch_size=64",
        "--trainer.logger=false", "--trainer.accelerator=cpu", "--trainer.devices=1",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        f"--trainer.default_root_dir={out}", "--seed_everything=0",
        *extra,
    ]


GENRES = ("Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi")


def own_data(root: Path, layout: str, *, users: int = 40, items: int = 120, length: int = 8, noise: float = 0.0,
             seed: int = 0) -> Path:
    """A MovieLens-like dataset as a person would bring it, in one of genrec's three formats.

    Item ``i`` (dataset id ``i + 1``) is a film of genre ``i % 6``; each user watches films of one genre in
    order (the next item is ``i + 6``, mod the catalogue), with a ``noise`` share of random films between.

    Args:
        layout: ``"sequences"`` (sequences.txt + items.jsonl with ``title`` / ``categories``), ``"recbole"``
            (``<name>.inter`` + ``<name>.item`` with RecBole's MovieLens fields ``movie_title``, ``release_year``,
            ``class``) or ``"csv"`` (``ratings.csv`` with MovieLens' named columns, no item file).

    Returns:
        The dataset's path: the folder (sequences, recbole) or the .csv file.
    """
    import random

    rng = random.Random(seed)
    g = len(GENRES)
    sequences = []
    for _ in range(users):
        item, seq = rng.randrange(items), []
        for _ in range(length):
            seq.append(item)
            item = rng.randrange(items) if rng.random() < noise else (item + g) % items
        sequences.append(seq)
    root.mkdir(parents=True, exist_ok=True)
    title = lambda i: f"Film {i + 1} ({1950 + i % 50})"  # noqa: E731
    if layout == "sequences":
        lines = [f"{u + 1} " + " ".join(str(i + 1) for i in seq) for u, seq in enumerate(sequences)]
        records = [{"item_id": i + 1, "title": title(i), "categories": [["Films", GENRES[i % g]]]} for i in range(items)]
        return write_sequences_dataset(root, lines, records)
    rows = [(u + 1, i + 1, 1 + (u * 7 + t) % 5, 880_000_000 + 3600 * t)
            for u, seq in enumerate(sequences) for t, i in enumerate(seq)]
    if layout == "csv":
        path = root / "ratings.csv"
        path.write_text("userId,movieId,rating,timestamp\n" + "".join(f"{u},{i},{r},{t}\n" for u, i, r, t in rows))
        return path
    if layout != "recbole":
        raise ValueError(f"unknown layout {layout!r}")
    (root / f"{root.name}.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        + "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows))
    (root / f"{root.name}.item").write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        + "".join(f"{i + 1}\t{title(i)}\t{1950 + i % 50}\t{GENRES[i % g]}\n" for i in range(items)))
    return root


def walk_title(item: int) -> str:
    """The walk's item titles (with an ampersand, which the item file stores as an HTML entity)."""
    return "Soap & Sponge" if item == 5 else f"Walk item {item}"


class TrainedWalk(NamedTuple):
    dataset: Path
    tokenizer: Path
    checkpoint: Path
    metrics: dict[str, float]
    """``test/...`` metrics of the checkpoint on the walk's test users."""
    stdout: str
    """What the run printed (metrics line, example recommendations)."""


@pytest.fixture(scope="session")
def trained_walk(tmp_path_factory, _one_torch_thread) -> TrainedWalk:
    """TIGER trained once per test session on the walk (300 steps through the CLI, then tested): the model every
    test of a trained model reads, instead of each training its own."""
    from genrec.cli import main

    tmp = tmp_path_factory.mktemp("trained-walk")
    dataset, tokenizer = synthetic(tmp)
    records = [{"item_id": i, "title": walk_title(i).replace("&", "&amp;")} for i in range(1, N_ITEMS + 1)]
    (dataset / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as env, contextlib.redirect_stdout(out):
        env.setenv("GENREC_RECORDS", str(tmp / "records"))
        cli = main(["fit", *cli_args(dataset, tokenizer, tmp / "run", "--trainer.max_steps=300",
                                     "--trainer.limit_val_batches=0", "--test_after_fit=true", "--examples=2")])
    (checkpoint,) = (tmp / "run").rglob("*.ckpt")
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if k.startswith("test/")}
    return TrainedWalk(dataset, tokenizer, checkpoint, metrics, out.getvalue())


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory) -> str:
    """A randomly initialised 2-layer BERT with MiniLM's tokenizer, saved as a local HF folder: an item text
    encoder that costs nothing to run."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from genrec.features.text import DEFAULT_ENCODER, resolve_encoder

    path = tmp_path_factory.mktemp("tiny-bert")
    AutoTokenizer.from_pretrained(resolve_encoder(DEFAULT_ENCODER)).save_pretrained(path)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37)
    BertModel(config).save_pretrained(path)
    return str(path)


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    """Three users; item ids are sparse integers so re-indexing is visible."""
    return write_sequences_dataset(
        tmp_path / "tiny",
        ["1 10 20 30 40", "2 20 30", "7 40 10 50 20 30 10"],
        [
            {"item_id": 10, "title": "Red &amp; Blue Lipstick", "categories": [["Beauty", "Makeup"]]},
            {"item_id": 20, "title": "Shampoo", "categories": [["Beauty", "Hair"]]},
            {"item_id": 30, "title": "Conditioner", "categories": [["Beauty", "Hair"]]},
            {"item_id": 40, "title": "Nail Polish", "categories": []},
            {"item_id": 50, "title": "Face Cream", "categories": [["Beauty", "Skin"], ["Gifts"]]},
        ],
    )


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """The test models are tiny: one thread avoids oversubscribing the CI machine's 2 cores (measured ~9x faster
    training steps under load than torch's default thread count)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _records_in_tmp(tmp_path, monkeypatch):
    """Tested runs write run records (genrec.report); tests keep theirs out of the repository's runs/records/."""
    monkeypatch.setenv("GENREC_RECORDS", str(tmp_path / "records"))
