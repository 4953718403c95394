"""The one-command pipeline (genrec.pipeline): train.py fits a missing tokenizer before it builds the run's objects."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from jsonargparse import Namespace

from genrec.cli import main
from genrec.pipeline import Artifact, fit_missing, required_artifacts
from genrec.seq2seq.data import SemanticIdData
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


def test_fit_missing_runs_each_missing_config_once_and_checks_its_output(tmp_path):
    present = tmp_path / "present"
    present.mkdir()
    data = {"init_args": {"tokenizer": str(present), "tokenizer_config": "unused.yaml",
                          "input_modalities": [{"tokenizer": str(tmp_path / "missing"), "tokenizer_config": "m.yaml"}]}}
    ran = []
    with pytest.raises(FileNotFoundError, match="m.yaml ran but did not write"):
        fit_missing(data, run=ran.append)
    assert ran == ["m.yaml"]  # the present artifact is never refitted
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
