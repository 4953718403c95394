"""Every experiment YAML under configs/ (outside configs/tokenizer/, tested beside the tokenizer) parses and
instantiates through genrec's CLI together with the base its header's Command line names first (configs/base/), and
starts with its header: purpose, exact command, result."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import genrec.cli
from genrec.cli import main
from genrec.data import load_dataset
from genrec.tokenizer.artifact import save_tokenizer

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.yaml")
                 if not {"tokenizer", "base"} & set(p.relative_to(ROOT / "configs").parts))
BASES = sorted((ROOT / "configs" / "base").glob("*.yaml"))


def header(config: Path) -> str:
    lines = config.read_text().splitlines()
    return "\n".join(lines[: next(i for i, x in enumerate(lines) if not x.startswith("#"))])


def command_configs(config: Path) -> list[Path]:
    """The ``--config`` files of the header's Command line, in order (a base first, then the experiment)."""
    [line] = [x for x in header(config).splitlines() if x.startswith("# Command:")]
    return [ROOT / c for c in re.findall(r"--config (\S+)", line)]


def config_args(config: Path) -> list[str]:
    """``--config`` arguments of the header's Command line: the base, if any, then the experiment."""
    return [arg for path in command_configs(config) for arg in ("--config", str(path))]


def test_configs_exist():
    names = {str(p.relative_to(ROOT / "configs")) for p in CONFIGS}
    assert {"debug.yaml", "tiger/beauty.yaml", "tiger/beauty-cpu.yaml", "tiger/sports.yaml"} <= names
    for system in ("mmgrec", "colarec", "mscgrec"):
        assert {f"{system}/beauty.yaml", f"{system}/beauty-cpu.yaml"} <= names


@pytest.mark.parametrize("config", sorted((ROOT / "configs").rglob("*.yaml")), ids=lambda p: str(p.relative_to(ROOT)))
def test_header(config):
    lines = config.read_text().splitlines()
    assert lines and lines[0].startswith("#"), "a config starts with a comment header"
    text = header(config)
    assert re.search(r"^# Command: +python train\.py fit --config ", text, re.MULTILINE), "the exact command, on one line"
    configs = command_configs(config)
    if config in BASES:  # no run of its own: its example command puts it first, an experiment second
        assert configs[0] == config and len(configs) == 2 and configs[1] in CONFIGS
        return
    assert configs[-1] == config, "the command runs this config, last (its keys override the base's)"
    assert all(c in BASES for c in configs[:-1]), "only a base comes before the experiment"
    assert "Result:" in text


@pytest.mark.parametrize("base", BASES, ids=lambda p: p.name)
def test_every_base_is_used(base):
    assert any(command_configs(c)[:-1] == [base] for c in CONFIGS)
    assert "model" not in yaml.safe_load(base.read_text()) and "data" not in yaml.safe_load(base.read_text())


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
    args = [*config_args(config), f"--trainer.default_root_dir={tmp_path}"]
    if data["dataset"] is None:  # a config for any dataset (configs/*/cpu.yaml): its command names one
        assert "--data.dataset PATH" in header(config)
        data["dataset"] = "amazon-beauty"
        args.append("--data.dataset=amazon-beauty")
    n_items = load_dataset(data["dataset"]).n_items
    if "tokenizer" in data:  # item-ID baselines (SASRec) have no tokenizer
        args.append(f"--data.init_args.tokenizer={fake_tokenizer(tmp_path / 'tok', n_items, (64, 64, 64, 1))}")
    if data.get("input_modalities"):  # MSCGRec: every input modality gets a stand-in artifact too
        fakes = [{"tokenizer": str(fake_tokenizer(tmp_path / f"input{m}", n_items, (32, 32, 32, 1)))}
                 for m in range(len(data["input_modalities"]))]
        args.append(f"--data.init_args.input_modalities={json.dumps(fakes)}")
    if data.get("content_sources"):  # ColaRec: random content instead of embedding every item's text here
        np.save(tmp_path / "content.npy", np.random.default_rng(0).standard_normal((n_items, 24)).astype(np.float32))
        source = {"class_path": "genrec.features.source.NpyFeatures", "init_args": {"path": str(tmp_path / "content.npy")}}
        args.append(f"--data.init_args.content_sources={json.dumps([source])}")
    cli = main(args, run=False)
    model, datamodule = cli.model, cli.datamodule
    # With its base, every run has a length (fit refuses one without; Lightning would train 1000 epochs).
    assert cli.config.trainer.max_epochs is not None or cli.config.trainer.max_steps != -1
    if "tokenizer" not in data:
        # The catalogue size and history length are linked from the datamodule by the CLI.
        assert model.hparams.n_items == datamodule.n_items == n_items
        assert model.hparams.max_len == datamodule.max_len == data["max_len"]
        return
    if not hasattr(model, "vocab"):  # the parallel-ID model: the artifact's digits, the catalogue size, max_len
        assert tuple(model.hparams.level_sizes) == (64, 64, 64, 1) == datamodule.level_sizes
        assert model.hparams.n_items == datamodule.n_items == n_items
        assert model.hparams.max_len == datamodule.max_len == data["max_len"]
        return
    # The model's vocabulary is derived from the artifact through the CLI's argument links.
    assert model.vocab.level_sizes == (64, 64, 64, 1) == datamodule.level_sizes
    assert model.model.config.vocab_size == datamodule.vocab.size
    assert model.hparams.beam_width >= model.hparams.top_k >= 20
    assert model.vocab.input_level_sizes == ((32, 32, 32, 1),) * len(data.get("input_modalities") or [])
    assert datamodule.content_dim == (24 if data.get("content_sources") else 0)


class Reached(Exception):
    """Raised in place of the pipeline step, which runs right after the training-length check."""


def _stop_at_pipeline(monkeypatch) -> None:
    def stop(*args, **kwargs):
        raise Reached
    monkeypatch.setattr(genrec.cli, "fit_missing", stop)


def _own_length(config: Path) -> bool:
    """Whether an experiment sets its own training length (e.g. the main job's 12 epochs) instead of its base's."""
    trainer = yaml.safe_load(config.read_text()).get("trainer") or {}
    return trainer.get("max_epochs") is not None or trainer.get("max_steps", -1) != -1


@pytest.mark.parametrize("config", [c for c in CONFIGS if len(command_configs(c)) > 1],
                         ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_fit_refuses_an_experiment_without_its_base(config, monkeypatch):
    """Given alone, an experiment sets no training length: fit stops before fitting or building anything."""
    _stop_at_pipeline(monkeypatch)
    if _own_length(config):  # it has a length of its own: the check lets it through, alone or on its base
        for args in (["--config", str(config)], config_args(config)):
            with pytest.raises(Reached):
                main(["fit", *args])
        return
    with pytest.raises(ValueError, match=r"no training length .* pass the base config first") as error:
        main(["fit", "--config", str(config)])
    assert "\n" not in str(error.value)
    assert f"--config configs/base/cpu.yaml --config {config}" in str(error.value)
    with pytest.raises(Reached):  # with its base it passes the check
        main(["fit", *config_args(config)])


def test_training_length_check_spares_tokenizer_fits_and_explicit_lengths(monkeypatch):
    _stop_at_pipeline(monkeypatch)
    with pytest.raises(Reached):  # an item tokenizer is not a recommender
        main(["fit", "--config", str(ROOT / "configs/tokenizer/debug.yaml"), "--trainer.max_epochs=null"])
    experiment = ROOT / "configs/tiger/beauty-cpu.yaml"
    for length in ("--trainer.max_epochs=2", "--trainer.max_steps=10", "--trainer.max_time=00:00:05:00",
                   "--trainer.fast_dev_run=true"):
        with pytest.raises(Reached):
            main(["fit", "--config", str(experiment), length])


def test_the_tiger_gpu_header_states_the_flop_count_of_its_model(tmp_path):
    """The expected epochs and minutes in configs/tiger/beauty.yaml come from a FLOP count: it must be this model's."""
    from torch.utils.flop_counter import FlopCounterMode

    config = ROOT / "configs/tiger/beauty.yaml"
    stated = float(re.search(r"([\d.]+) GFLOP per training sample", header(config)).group(1))
    n_items = load_dataset("amazon-beauty").n_items
    tokenizer = fake_tokenizer(tmp_path / "tok", n_items, (256, 256, 256, 16))  # Beauty's level sizes
    cli = main([*config_args(config), f"--trainer.default_root_dir={tmp_path}",
                f"--data.init_args.tokenizer={tokenizer}", "--trainer.accelerator=cpu"], run=False)
    model = cli.model.train()
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 256, (8, 20, 4), generator=g) % torch.tensor([256, 256, 256, 16])
    batch = {"input_ids": model.vocab.encode(codes).flatten(1), "labels": model.vocab.encode(codes[:, 0])}
    batch["attention_mask"] = torch.ones_like(batch["input_ids"])
    with FlopCounterMode(display=False) as counter:
        model.training_losses(batch)["loss"].backward()
    assert counter.get_total_flops() / 8 / 1e9 == pytest.approx(stated, abs=0.005)
