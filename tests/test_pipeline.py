"""The one-command pipeline (genrec.pipeline): train.py fits a missing tokenizer before it builds the run's objects."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from jsonargparse import Namespace

from genrec.cli import main
from genrec.features import NpyFeatures
from genrec.pipeline import Artifact, fit_missing, required_artifacts
from genrec.seq2seq.data import SemanticIdData
from genrec.tokenizer.artifact import save_tokenizer
from tests.conftest import N_ITEMS, cli_args, synthetic


def _tokenizer_config(tmp_path: Path, dataset: Path, out: Path) -> Path:
    """A residual k-means config over a random feature matrix of the walk's items."""
    features = tmp_path / "features.npy"
    np.save(features, np.random.default_rng(0).standard_normal((N_ITEMS, 8)).astype(np.float32))
    config = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "devices": 1, "max_epochs": 1, "logger": False,
                    "enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False,
                    "default_root_dir": str(tmp_path / "tokenizer-run")},
        "model": {"class_path": "genrec.tokenizer.lightning.RQKMeansTokenizer",
                  "init_args": {"output_dir": str(out), "levels": 2, "codebook_size": 4, "seed": 0}},
        "data": {"class_path": "genrec.tokenizer.datamodule.ItemFeatures",
                 "init_args": {"dataset": str(dataset), "batch_size": None,
                               "sources": [{"class_path": "genrec.features.NpyFeatures",
                                            "init_args": {"path": str(features)}}]}},
    }
    path = tmp_path / "tokenizer.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_required_artifacts_reads_the_data_config():
    data = Namespace(class_path="genrec.seq2seq.data.SemanticIdData", init_args=Namespace(
        tokenizer="tokenizers/a", tokenizer_config="a.yaml",
        input_modalities=[Namespace(tokenizer="tokenizers/b", tokenizer_config=None)]))
    assert required_artifacts(data) == [Artifact("tokenizers/a", "a.yaml"), Artifact("tokenizers/b", None)]
    assert required_artifacts(Namespace(class_path="x.ItemSequenceData", init_args=Namespace(dataset="d"))) == []
    made = ["--config", "base.yaml", "--config", "sasrec.yaml"]
    features = Namespace(class_path="x.ItemFeatures", init_args=Namespace(sources=[
        Namespace(class_path="genrec.features.TextEmbeddings", init_args=Namespace(normalize="l2")),
        Namespace(class_path="genrec.features.NpyFeatures", init_args=Namespace(path="runs/e.npy", made_by=made)),
        Namespace(class_path="genrec.features.NpyFeatures", init_args=Namespace(path="f.npy", made_by=None))]))
    (artifact,) = required_artifacts(features)
    assert artifact.path == "runs/e.npy" and artifact.fit_args() == made


def test_fit_missing_runs_each_missing_config_once_and_checks_its_output(tmp_path):
    present = save_tokenizer(tmp_path / "present", codes=torch.tensor([[0], [1]]), level_sizes=(2,), codebooks=None,
                             config={}, metrics={}, fingerprint="x", plot=False)
    half = tmp_path / "half"  # what a killed fit of an older genrec left: a folder without the manifest
    half.mkdir()
    (half / "codes.npy").write_bytes(b"")
    data = {"init_args": {"tokenizer": str(present), "tokenizer_config": "unused.yaml",
                          "input_modalities": [{"tokenizer": str(tmp_path / "missing"), "tokenizer_config": "m.yaml"},
                                               {"tokenizer": str(half), "tokenizer_config": "h.yaml"}]}}
    ran = []
    with pytest.raises(FileNotFoundError, match="m.yaml ran but did not write"):
        fit_missing(data, run=ran.append)
    assert ran == [["--config", "m.yaml"]]  # the whole artifact is never refitted
    ran.clear()
    data["init_args"]["input_modalities"].pop(0)
    with pytest.raises(FileNotFoundError, match="h.yaml ran but did not write"):
        fit_missing(data, run=ran.append)
    assert ran == [["--config", "h.yaml"]]  # the half-written folder is made again
    with pytest.raises(FileNotFoundError, match="no tokenizer_config"):
        fit_missing({"init_args": {"tokenizer": str(tmp_path / "missing")}}, run=ran.append)


def test_train_py_fits_the_missing_tokenizer_and_starts_from_the_same_weights(tmp_path):
    """The library never trains (the DataModule raises); the CLI fits the artifact first, then reseeds, so the model
    initialises exactly as it does when the artifact is found on disk."""
    dataset, _ = synthetic(tmp_path)
    artifact = tmp_path / "fitted-tokenizer"
    config = _tokenizer_config(tmp_path, dataset, artifact)
    with pytest.raises(FileNotFoundError, match="fit it first"):
        SemanticIdData(dataset=str(dataset), tokenizer=str(artifact), tokenizer_config=str(config))
    args = [*cli_args(dataset, artifact, tmp_path / "run"), f"--data.tokenizer_config={config}", "--seed_everything=1"]
    fresh = main(args, run=False)
    assert (artifact / "codes.npy").is_file()
    found = main(args, run=False)  # the artifact exists now: nothing is fitted
    for (name, a), b in zip(fresh.model.state_dict().items(), found.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_one_command_chains_sasrec_then_tokenizer_then_the_generative_model(tmp_path):
    """A TIGER run whose tokenizer is missing and whose tokenizer reads SASRec embeddings that are missing too:
    train.py trains SASRec, fits the tokenizer on its embeddings, then builds the model."""
    dataset, _ = synthetic(tmp_path)
    embeddings = tmp_path / "sasrec" / "item_embeddings.npy"
    sasrec = tmp_path / "sasrec.yaml"
    sasrec.write_text(yaml.safe_dump({
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "devices": 1, "max_epochs": 2, "logger": False,
                    "enable_progress_bar": False, "enable_model_summary": False,
                    "default_root_dir": str(embeddings.parent)},
        "model": {"class_path": "genrec.baselines.sasrec.SASRecRecommender",
                  "init_args": {"arch": {"d_model": 8, "dropout": 0.0}, "warmup_steps": 1}},
        "data": {"class_path": "genrec.baselines.data.ItemSequenceData",
                 "init_args": {"dataset": str(dataset), "max_len": 5, "batch_size": 32}},
    }))
    artifact = tmp_path / "chained-tokenizer"
    config = _tokenizer_config(tmp_path, dataset, artifact)
    spec = yaml.safe_load(config.read_text())
    spec["data"]["init_args"]["sources"] = [{"class_path": "genrec.features.NpyFeatures", "init_args": {
        "path": str(embeddings), "made_by": ["--config", str(sasrec)]}}]
    config.write_text(yaml.safe_dump(spec))
    with pytest.raises(FileNotFoundError, match="make it first"):
        NpyFeatures(path=str(embeddings)).load(dataset)
    main([*cli_args(dataset, artifact, tmp_path / "run"), f"--data.tokenizer_config={config}"], run=False)
    assert np.load(embeddings).shape == (N_ITEMS, 8)
    described = json.loads((artifact / "config.json").read_text())
    assert described["data"]["sources"][0]["path"] == str(embeddings)
