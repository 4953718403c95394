"""Run records and the results table: records written by the real CLI, refused when incomplete, rendered, and
placed between the README markers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from genrec.cli import main as cli_main
from genrec.report import (
    METRICS,
    RecordError,
    load_record,
    load_records,
    main,
    render,
    replace_in_readme,
)
from tests.conftest import cli_args, synthetic

ROOT = Path(__file__).resolve().parents[1]


def record(**changes) -> dict:
    base = {
        "model": "TIGER", "dataset": "amazon-beauty", "features": "text", "tokenizer": "rq-kmeans (t)",
        "metrics": {name: 0.012345 for name in METRICS}, "train_seconds": 61.0, "device": "cpu (2 threads)",
        "commit": "abc1234", "date": "2026-11-23", "command": "python train.py fit", "config": None,
    }
    return base | changes


def write(folder: Path, name: str, content: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(json.dumps(content))
    return path


def test_table_sorted_formatted_with_published_anchors(tmp_path):
    write(tmp_path, "a.json", record(model="TIGER", dataset="amazon-sports"))
    write(tmp_path, "b.json", record(model="TIGER", metrics={name: 0.0385 for name in METRICS}))
    write(tmp_path, "c.json", record(model="SASRec", features="item ids", tokenizer="-", train_seconds=None,
                                     notes="undertrained"))
    table = render(load_records([tmp_path]))
    rows = [line for line in table.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [row.split(" | ")[1:3] for row in rows] == [
        ["SASRec", "amazon-beauty"], ["TIGER", "amazon-beauty"], ["TIGER", "amazon-sports"]
    ]
    assert rows[1].count(" 0.0385 ") == len(METRICS)
    assert "0.0123 |" in rows[0] and "0.012345" not in table
    assert "| 61 s |" in rows[1] and "| — |" in rows[0]  # training time; a test-only run has none
    assert "undertrained" in table
    published = table[table.index("**Published**"):]
    for anchor in ("| TIGER | amazon-beauty | 0.0454 | 0.0648 |", "| SASRec | amazon-sports | 0.0233 | 0.0350 |",
                   "0.0921", "0.0740", "0.0423"):
        assert anchor in published


@pytest.mark.parametrize(
    ("content", "field"),
    [
        ({k: v for k, v in record().items() if k != "device"}, "'device'"),
        ({k: v for k, v in record().items() if k != "train_seconds"}, "'train_seconds'"),
        (record(metrics={name: 0.1 for name in METRICS if name != "ndcg@20"}), "'metrics.ndcg@20'"),
        (record(metrics={name: "0.1" for name in METRICS}), "'metrics.recall@5'"),
        (record(metrics={name: float("nan") for name in METRICS}), "'metrics.recall@5'"),
        (record(model=None), "'model'"),
    ],
)
def test_incomplete_record_is_refused_naming_file_and_field(tmp_path, content, field):
    write(tmp_path, "good.json", record())
    bad = write(tmp_path, "bad.json", content)
    with pytest.raises(RecordError, match=field) as error:
        load_records([tmp_path])
    assert str(bad) in str(error.value)


def test_cli_refuses_bad_record_and_missing_folder(tmp_path, capsys):
    write(tmp_path, "bad.json", {k: v for k, v in record().items() if k != "commit"})
    assert main(["--records", str(tmp_path)]) == 1
    assert "bad.json" in capsys.readouterr().err
    assert main(["--records", str(tmp_path / "missing")]) == 1


def test_readme_markers(tmp_path):
    text = "# x\n<!-- results:start -->\nold table\n<!-- results:end -->\ntail\n"
    assert replace_in_readme(text, "NEW\n") == "# x\n<!-- results:start -->\nNEW\n<!-- results:end -->\ntail\n"
    with pytest.raises(ValueError, match="results:end"):
        replace_in_readme("# x\n<!-- results:start -->\n", "NEW\n", where="README.md")
    readme = tmp_path / "README.md"
    readme.write_text(text)
    records = tmp_path / "records"
    write(records, "r.json", record())
    output = tmp_path / "table.md"
    assert main(["--records", str(records), "--readme", str(readme), "--output", str(output)]) == 0
    assert output.read_text() in readme.read_text() and "old table" not in readme.read_text()
    assert readme.read_text().endswith("<!-- results:end -->\ntail\n")
    readme.write_text("# no markers\n")
    assert main(["--records", str(records), "--readme", str(readme)]) == 1
    assert readme.read_text() == "# no markers\n"  # never adds the markers itself


def test_committed_records_load():
    records = load_records([ROOT / "benchmarks" / "records"])
    assert {r["model"] for r in records} >= {"TIGER", "SASRec", "MMGRec", "ColaRec", "MSCGRec"}


def test_cli_test_after_fit_writes_a_loadable_record(tmp_path, monkeypatch):
    dataset, tokenizer = synthetic(tmp_path, users=40)
    monkeypatch.setenv("GENREC_RECORDS", str(tmp_path / "records"))
    config = tmp_path / "tiny.yaml"
    config.write_text("test_after_fit: true\nexamples: 0\n")
    cli_main(["fit", f"--config={config}", *cli_args(dataset, tokenizer, tmp_path / "run", "--trainer.max_steps=3")])
    [path] = (tmp_path / "records").glob("*.json")
    assert path.name.endswith("-GenerativeRecommender-walk.json")
    loaded = load_record(path)
    assert loaded["model"] == "TIGER" and loaded["dataset"] == str(dataset)
    assert loaded["features"] == "unknown"  # the synthetic artifact's config names no feature sources
    assert loaded["train_seconds"] > 0 and loaded["device"].startswith("cpu")
    assert loaded["config"] == str(config) and 0 <= loaded["metrics"]["recall@20"] <= 1


def test_features_and_tokenizer_labels_of_the_seed_systems():
    from types import SimpleNamespace

    from genrec.report import describe_features
    from genrec.features import NpyFeatures

    def artifact(sources, **config):
        return SimpleNamespace(config={"method": "rq-vae", "hparams": {"levels": 3, "codebook_size": 128},
                                       "data": {"sources": sources}, **config}, path="tokenizers/x")

    def catalogue(semantic_ids, inputs=(), **datamodule):
        return SimpleNamespace(catalogue=SimpleNamespace(semantic_ids=semantic_ids, input_artifacts=inputs), **datamodule)

    graph = [{"type": "GraphFeatures", "sources": [{"type": "TextEmbeddings"}]}]
    mmgrec = catalogue(artifact(graph, collision="extra_code", collision_order="popularity"))
    assert describe_features(mmgrec) == ("graph(text)", "rq-vae 3x128 + extra_code by popularity (tokenizers/x)")
    sasrec = [{"type": "NpyFeatures", "path": "runs/sasrec-beauty/item_embeddings.npy"}]
    mscgrec = catalogue(artifact(sasrec), inputs=[artifact([{"type": "TextEmbeddings"}])])
    assert describe_features(mscgrec)[0] == "sasrec | input: text"
    # ColaRec's content sources, as the CLI passes them (dicts) and as objects.
    cli_source = {"class_path": "genrec.features.source.TextEmbeddings", "init_args": {}}
    for content in ([cli_source], [NpyFeatures(path="x.npy")]):
        colarec = catalogue(artifact(sasrec), hparams={"content_sources": content})
        assert describe_features(colarec)[0] == "sasrec | content: " + ("text" if content[0] is cli_source else "NpyFeatures")


def test_a_partial_test_run_writes_a_marked_record_that_the_table_leaves_out(tmp_path, monkeypatch):
    dataset, tokenizer = synthetic(tmp_path, users=40)
    monkeypatch.setenv("GENREC_RECORDS", str(tmp_path / "records"))
    config = tmp_path / "tiny.yaml"
    config.write_text("test_after_fit: true\nexamples: 0\n")
    cli_main(["fit", f"--config={config}", *cli_args(dataset, tokenizer, tmp_path / "run", "--trainer.max_steps=3",
                                                     "--trainer.limit_test_batches=1")])
    [path] = (tmp_path / "records").glob("*.json")
    assert path.name.endswith("-walk-partial.json")
    loaded = load_record(path)
    assert loaded["partial"] is True and "limit_test_batches=1" in loaded["notes"]
    whole = write(tmp_path / "records", "whole.json", record(model="SASRec"))
    table = render(load_records([tmp_path / "records"]))
    assert "| 1 | SASRec |" in table and "| 2 |" not in table  # the measured rows: the whole-test run alone
    assert "(1 record of runs that tested part of the test split left out.)" in table
    assert load_record(whole).get("partial") is None
