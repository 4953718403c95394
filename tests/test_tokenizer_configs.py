"""Every tokenizer YAML under configs/tokenizer/ parses and instantiates through train.py's CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs" / "tokenizer").glob("*.yaml"))


def test_there_are_tokenizer_configs():
    assert {p.name for p in CONFIGS} >= {"beauty-rqkmeans.yaml", "beauty-rqvae.yaml"}


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_tokenizer_config_instantiates(config, tmp_path, monkeypatch):
    import genrec.cli
    from genrec.cli import main
    from genrec.pipeline import required_artifacts
    from genrec.tokenizer.datamodule import ItemFeatures
    from genrec.features import FeatureSource
    from genrec.tokenizer.lightning import (
        ConstrainedKMeansTokenizer, ProductKMeansTokenizer, RQKMeansTokenizer, RQVAETokenizer,
    )

    # Through train.py's own CLI, so its argument links are exercised too; nothing is loaded or fitted: the
    # pipeline step only says what it would make (SASRec's embeddings, for the configs that read them).
    wanted = []
    monkeypatch.setattr(genrec.cli, "fit_missing", lambda data, run: wanted.extend(required_artifacts(data)) or [])
    args = ["--config", str(config), "--trainer.default_root_dir", str(tmp_path)]
    spec = yaml.safe_load(config.read_text())
    if spec["data"]["init_args"]["dataset"] is None:  # a recipe for any dataset: its command names the dataset
        assert "--data.dataset PATH --model.output_dir tokenizers/NAME" in config.read_text()
        args += ["--data.dataset", "amazon-beauty", "--model.output_dir", f"tokenizers/{config.stem}"]
    cli = main(args, run=False)
    for artifact in wanted:
        assert artifact.path.endswith("item_embeddings.npy")
        assert artifact.fit_args()[::2] == ["--config", "--config"] and "configs/sasrec/" in artifact.fit_args()[-1]
    assert isinstance(cli.model, (RQKMeansTokenizer, RQVAETokenizer, ConstrainedKMeansTokenizer, ProductKMeansTokenizer))
    assert isinstance(cli.datamodule, ItemFeatures)
    assert cli.datamodule.sources and all(isinstance(s, FeatureSource) for s in cli.datamodule.sources)
    assert cli.model.hparams.output_dir == f"tokenizers/{config.stem}"
