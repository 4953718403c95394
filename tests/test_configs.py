"""Every experiment YAML under configs/ (outside configs/tokenizer/, tested beside the tokenizer) parses and
instantiates through genrec's CLI, and starts with its header: purpose, exact command, result."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from genrec.cli import main
from genrec.data import load_dataset
from genrec.tokenizer.artifact import save_tokenizer

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if "tokenizer" not in p.relative_to(ROOT / "configs").parts)


def test_configs_exist():
    names = {str(p.relative_to(ROOT / "configs")) for p in CONFIGS}
    assert {"debug.yaml", "tiger/beauty.yaml", "tiger/beauty-cpu.yaml", "tiger/sports.yaml"} <= names
    for system in ("mmgrec", "colarec", "mscgrec"):
        assert {f"{system}/beauty.yaml", f"{system}/beauty-cpu.yaml"} <= names


@pytest.mark.parametrize("config", sorted((ROOT / "configs").rglob("*.yaml")), ids=lambda p: str(p.relative_to(ROOT)))
def test_header(config):
    lines = config.read_text().splitlines()
    assert lines and lines[0].startswith("#"), "a config starts with a comment header"
    text = "\n".join(line for line in lines[: next(i for i, x in enumerate(lines) if not x.startswith("#"))])
    assert f"python train.py fit --config {config.relative_to(ROOT)}" in text
    assert "Result:" in text


def fake_tokenizer(directory: Path, n_items: int, level_sizes: tuple[int, ...]) -> Path:
    """A valid artifact of random unique codes, so configs instantiate without fitting the real tokenizer."""
    g = torch.Generator().manual_seed(0)
    width = level_sizes[0] * level_sizes[1] * level_sizes[2]
    flat = torch.randperm(width, generator=g)[:n_items]
    codes = torch.stack([flat // (level_sizes[1] * level_sizes[2]), (flat // level_sizes[2]) % level_sizes[1],
                         flat % level_sizes[2], torch.zeros_like(flat)], dim=1)
    return save_tokenizer(directory, codes=codes, level_sizes=level_sizes, codebooks=None, config={}, metrics={},
                          fingerprint="fake", plot=False)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_config_instantiates(config, tmp_path):
    data = yaml.safe_load(config.read_text())["data"]["init_args"]
    n_items = load_dataset(data["dataset"]).n_items
    args = ["--config", str(config), f"--trainer.default_root_dir={tmp_path}"]
    if "tokenizer" in data:  # item-ID baselines (SASRec) have no tokenizer
        args.append(f"--data.init_args.tokenizer={fake_tokenizer(tmp_path / 'tok', n_items, (64, 64, 64, 1))}")
    if data.get("input_modalities"):  # MSCGRec: every input modality gets a stand-in artifact too
        fakes = [{"tokenizer": str(fake_tokenizer(tmp_path / f"input{m}", n_items, (32, 32, 32, 1)))}
                 for m in range(len(data["input_modalities"]))]
        args.append(f"--data.init_args.input_modalities={json.dumps(fakes)}")
    if data.get("content_sources"):  # ColaRec: random content instead of embedding every item's text here
        np.save(tmp_path / "content.npy", np.random.default_rng(0).standard_normal((n_items, 24)).astype(np.float32))
        source = {"class_path": "genrec.tokenizer.features.NpyFeatures", "init_args": {"path": str(tmp_path / "content.npy")}}
        args.append(f"--data.init_args.content_sources={json.dumps([source])}")
    cli = main(args, run=False)
    model, datamodule = cli.model, cli.datamodule
    if "tokenizer" not in data:
        # The catalogue size and history length are linked from the datamodule by the CLI.
        assert model.hparams.n_items == datamodule.n_items == n_items
        assert model.hparams.max_len == datamodule.max_len == data["max_len"]
        return
    # The model's vocabulary is derived from the artifact through the CLI's argument links.
    assert model.vocab.level_sizes == (64, 64, 64, 1) == datamodule.level_sizes
    assert model.model.config.vocab_size == datamodule.vocab.size
    assert model.hparams.beam_width >= model.hparams.top_k >= 20
    assert model.vocab.input_level_sizes == ((32, 32, 32, 1),) * len(data.get("input_modalities") or [])
    assert datamodule.content_dim == (24 if data.get("content_sources") else 0)
