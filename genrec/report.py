"""Run records and the one results table.

Every run tested through the CLI writes one JSON record (``write_record``, called by ``genrec/cli.py``) to
``runs/records/`` (or ``$GENREC_RECORDS``). Records worth keeping are copied to ``benchmarks/records/``, which is
committed. ``python -m genrec.report`` renders all records as one markdown table followed by the published anchor
numbers, and with ``--readme README.md`` writes it between the README's ``<!-- results:start -->`` and
``<!-- results:end -->`` markers.

A record that lacks a field, or holds a non-numeric metric, is refused with the file and field named: a results
table that silently drops a run is worse than none.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from genrec.provenance import device_name, git_commit, load_average

log = logging.getLogger(__name__)

METRICS = ("recall@5", "recall@10", "recall@20", "ndcg@5", "ndcg@10", "ndcg@20")
# Field -> allowed JSON types; None in a tuple means the field may be null (but must be present).
FIELDS: dict[str, tuple] = {
    "model": (str,),
    "dataset": (str,),
    "features": (str,),
    "tokenizer": (str,),
    "metrics": (dict,),
    "train_seconds": (int, float, type(None)),
    "device": (str,),
    "commit": (str,),
    "date": (str,),
    "command": (str,),
    "config": (str, type(None)),
}
DEFAULT_DIRS = ("runs/records", "benchmarks/records")
START, END = "<!-- results:start -->", "<!-- results:end -->"

# LightningModule class -> the name used in papers and in the table.
MODEL_NAMES = {"GenerativeRecommender": "TIGER", "SASRecRecommender": "SASRec", "ParallelIdRecommender": "RPG"}
# Feature source class (tokenizer artifact config.json, data.sources[].type) -> short name.
FEATURE_NAMES = {
    "TextEmbeddings": "text",
    "CooccurrenceFeatures": "cooccurrence",
    "ImageEmbeddings": "image",
    "GraphFeatures": "graph",
}

# Published numbers on the same P5 leave-one-out splits (genrec/data/bundled/README.md). None: not reported.
PUBLISHED: tuple[dict[str, Any], ...] = (
    {"model": "TIGER", "dataset": "amazon-beauty", "source": "TIGER (NeurIPS 2023), Table 1",
     "metrics": {"recall@5": 0.0454, "recall@10": 0.0648, "ndcg@5": 0.0321, "ndcg@10": 0.0384}},
    {"model": "TIGER", "dataset": "amazon-sports", "source": "TIGER (NeurIPS 2023), Table 1",
     "metrics": {"recall@5": 0.0264, "recall@10": 0.0400, "ndcg@5": 0.0181, "ndcg@10": 0.0225}},
    {"model": "SASRec", "dataset": "amazon-beauty", "source": "SASRec as printed in TIGER, Table 1",
     "metrics": {"recall@5": 0.0387, "recall@10": 0.0605, "ndcg@5": 0.0249, "ndcg@10": 0.0318}},
    {"model": "SASRec", "dataset": "amazon-sports", "source": "SASRec as printed in TIGER, Table 1",
     "metrics": {"recall@5": 0.0233, "recall@10": 0.0350, "ndcg@5": 0.0154, "ndcg@10": 0.0192}},
    {"model": "SASRec, sampled softmax", "dataset": "amazon-beauty", "source": "eSASRec (RecSys 2025)",
     "metrics": {"recall@10": 0.0921, "ndcg@10": 0.0531}},
    {"model": "SASRec, sampled softmax", "dataset": "amazon-sports", "source": "eSASRec (RecSys 2025)",
     "metrics": {"recall@10": 0.0569, "ndcg@10": 0.0314}},
    {"model": "SASRec, tuned", "dataset": "amazon-beauty", "source": "cornac",
     "metrics": {"recall@10": 0.0740, "ndcg@10": 0.0423}},
)


class RecordError(ValueError):
    """A run record that cannot enter the table; the message names the file and the field."""


# ---------------------------------------------------------------------------------------------------- writing


def _source_names(sources: Sequence[Mapping[str, Any]]) -> list[str]:
    names = []
    for source in sources:
        kind = source.get("type", "?")
        if kind == "NpyFeatures":  # a .npy matrix: name it by its file (SASRec item embeddings in our configs)
            stem = Path(str(source.get("path", "npy"))).stem
            names.append("sasrec" if "sasrec" in str(source.get("path", "")).lower() else stem)
        elif kind == "GraphFeatures":  # a graph encoder over other sources
            inner = _source_names(source.get("sources") or [])
            names.append(f"graph({'+'.join(inner)})" if inner else "graph")
        else:
            names.append(FEATURE_NAMES.get(kind, kind))
    return names


def _artifact_features(semantic_ids: Any) -> str:
    config = semantic_ids.config or {}
    return "+".join(_source_names((config.get("data") or {}).get("sources") or [])) or "unknown"


def describe_features(datamodule: Any) -> tuple[str, str]:
    """``(features, tokenizer)`` of a datamodule: from its semantic-ID artifact's config.json, else item ids.

    Input-only modalities (MSCGRec) follow as ``| input: ...``, item content (ColaRec) as ``| content: ...``.
    """
    catalogue = getattr(datamodule, "catalogue", None)  # genrec.seq2seq.catalogue.Catalogue, for semantic-ID data
    semantic_ids = getattr(catalogue, "semantic_ids", None)
    if semantic_ids is None:
        return "item ids", "-"
    config = semantic_ids.config or {}
    features = _artifact_features(semantic_ids)
    inputs = [_artifact_features(ids) for ids in catalogue.input_artifacts]
    if inputs:
        features += " | input: " + ", ".join(inputs)
    content = (getattr(datamodule, "hparams", None) or {}).get("content_sources") or []
    if content:
        # Sources arrive as objects, or from the CLI as {"class_path": ..., "init_args": ...} dicts.
        kinds = [str(c.get("class_path", "?")).rpartition(".")[2] if isinstance(c, Mapping) else type(c).__name__
                 for c in content]
        features += " | content: " + "+".join(FEATURE_NAMES.get(kind, kind) for kind in kinds)
    hparams = config.get("hparams") or {}
    tokenizer = config.get("method", "?")
    if hparams.get("levels") and hparams.get("codebook_size"):
        tokenizer += f" {hparams['levels']}x{hparams['codebook_size']}"
    if config.get("collision"):
        tokenizer += f" + {config['collision']}"
        if config.get("collision_order") == "popularity":
            tokenizer += " by popularity"
    return features, f"{tokenizer} ({semantic_ids.path})"


def write_record(
    *,
    trainer: Any,
    model: Any,
    datamodule: Any,
    train_seconds: float | None,
    config: str | None,
    directory: str | Path | None = None,
) -> Path | None:
    """Writes the run record of a tested run; returns its path (None when the run has no ranking metrics).

    Args:
        trainer: the Lightning trainer after ``test`` (``callback_metrics`` holds ``test/recall@10`` ...).
        model: the LightningModule (its class names the model).
        datamodule: the DataModule (dataset name; semantic-ID artifact if any).
        train_seconds: wall time of ``fit``; None for a test-only run.
        config: the ``--config`` file(s) of the command, if any.
        directory: where to write; default ``$GENREC_RECORDS`` or ``runs/records``.
    """
    found = {name: trainer.callback_metrics.get(f"test/{name}") for name in METRICS}
    if any(value is None for value in found.values()):
        log.info("no run record: the test metrics lack %s", [k for k, v in found.items() if v is None])
        return None
    from genrec.data.dataset import dataset_name

    features, tokenizer = describe_features(datamodule)
    partial = partial_test(trainer)
    dataset = getattr(getattr(datamodule, "dataset", None), "name", None) or "?"
    now = datetime.now(timezone.utc)
    record = {
        "model": getattr(model, "system_name", None) or MODEL_NAMES.get(type(model).__name__, type(model).__name__),
        "dataset": dataset,
        "features": features,
        "tokenizer": tokenizer,
        "metrics": {name: round(float(value), 6) for name, value in found.items()},
        "train_seconds": None if train_seconds is None else round(train_seconds, 1),
        "device": device_name(trainer.strategy.root_device, world_size=trainer.world_size),
        "commit": git_commit(),
        "load": load_average(),
        "date": now.date().isoformat(),
        "command": " ".join(sys.argv),
        "config": config,
    }
    if partial:
        record["partial"] = True
        record["notes"] = f"partial test set ({partial}): left out of the results table"
    out = Path(directory or os.environ.get("GENREC_RECORDS") or DEFAULT_DIRS[0])
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{now:%Y%m%dT%H%M%SZ}-{type(model).__name__}-{dataset_name(dataset)}{'-partial' if partial else ''}"
    path, n = out / f"{stem}.json", 1
    while path.exists():  # two runs finishing in the same second
        n += 1
        path = out / f"{stem}-{n}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    log.info("run record written to %s", path)
    return path


def partial_test(trainer: Any) -> str:
    """Why a run tested only part of the test split ("" when it tested all of it): ``fast_dev_run`` or a
    ``limit_test_batches`` other than 1.0 (an integer limit counts as partial even where it covers every batch)."""
    if getattr(trainer, "fast_dev_run", False):
        return "fast_dev_run"
    limit = getattr(trainer, "limit_test_batches", 1.0)
    if limit is not None and not (isinstance(limit, float) and limit == 1.0):
        return f"limit_test_batches={limit}"
    return ""


# ---------------------------------------------------------------------------------------------------- reading


def load_record(path: str | Path) -> dict[str, Any]:
    """Reads and checks one record; raises :class:`RecordError` naming the file and the bad field."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise RecordError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(record, dict):
        raise RecordError(f"{path}: expected a JSON object, got {type(record).__name__}")
    for field, types in FIELDS.items():
        if field not in record:
            raise RecordError(f"{path}: field {field!r} is missing")
        # bool is an int subclass: refuse it explicitly as a number.
        if not isinstance(record[field], types) or isinstance(record[field], bool):
            allowed = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise RecordError(f"{path}: field {field!r} must be {allowed}, got {record[field]!r}")
    for name in METRICS:
        value = record["metrics"].get(name)
        if name not in record["metrics"]:
            raise RecordError(f"{path}: field 'metrics.{name}' is missing")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise RecordError(f"{path}: field 'metrics.{name}' must be a finite number, got {value!r}")
    return record


def load_records(directories: Sequence[str | Path], *, required: bool = True) -> list[dict[str, Any]]:
    """All ``*.json`` records under the given folders, each checked by :func:`load_record`.

    Args:
        directories: folders to read.
        required: raise when a folder does not exist (False for the defaults, which may not exist yet).
    """
    records = []
    for directory in directories:
        directory = Path(directory)
        if not directory.is_dir():
            if required:
                raise FileNotFoundError(f"records folder {directory} does not exist")
            continue
        records += [load_record(path) for path in sorted(directory.glob("*.json"))]
    return records


# ---------------------------------------------------------------------------------------------------- rendering


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def render(records: Sequence[Mapping[str, Any]]) -> str:
    """The markdown results table of the records (sorted by dataset, model, features, tokenizer, date), their
    commands and notes, then the published anchors."""
    partial = sum(1 for r in records if r.get("partial"))
    whole = [r for r in records if not r.get("partial")]
    ordered = sorted(whole, key=lambda r: (r["dataset"], r["model"], r["features"], r["tokenizer"], r["date"]))
    metric_heads = [name.replace("recall", "R").replace("ndcg", "N") for name in METRICS]
    lines = [
        "Measured by genrec (one row per run record; `python -m genrec.report` regenerates this table):",
        "",
        _row(["#", "model", "dataset", "features", "tokenizer", *metric_heads, "training time", "device", "commit",
              "date"]),
        _row(["---"] * 4 + ["---"] + ["---:"] * (len(METRICS) + 1) + ["---"] * 3),
    ]
    for i, r in enumerate(ordered, 1):
        lines.append(_row([i, r["model"], r["dataset"], r["features"], r["tokenizer"],
                           *(_number(r["metrics"][m]) for m in METRICS), _duration(r["train_seconds"]),
                           r["device"], r["commit"], r["date"]]))
    if not ordered:
        lines.append(_row(["", "no run records yet", *[""] * (len(METRICS) + 7)]))
    lines.append("")
    for i, r in enumerate(ordered, 1):
        note = f" {r['notes']}" if r.get("notes") else ""
        lines.append(f"{i}. `{r['command']}`{note}")
    if partial:
        lines.append(f"\n({partial} record{'s' if partial > 1 else ''} of runs that tested part of the test split "
                     "left out.)")
    lines += [
        "",
        "**Published** numbers on the same splits (as printed in the papers, not measured by genrec; — not reported):",
        "",
        _row(["model (published)", "dataset", *metric_heads, "source"]),
        _row(["---", "---"] + ["---:"] * len(METRICS) + ["---"]),
    ]
    for p in sorted(PUBLISHED, key=lambda p: (p["dataset"], p["model"])):
        lines.append(_row([p["model"], p["dataset"], *(_number(p["metrics"].get(m)) for m in METRICS), p["source"]]))
    return "\n".join(lines) + "\n"


def replace_in_readme(text: str, table: str, *, where: str = "README") -> str:
    """``text`` with everything between the results markers replaced by ``table``; raises if a marker is missing."""
    start, end = text.find(START), text.find(END)
    if start < 0 or end < 0 or end < start:
        missing = [m for m, at in ((START, start), (END, end)) if at < 0] or [f"{START} before {END}"]
        raise ValueError(f"{where}: the results markers are missing or out of order: {', '.join(missing)}")
    return text[: start + len(START)] + "\n" + table + text[end:]


def plot_metric_bars(
    labels: Sequence[str],
    values: Mapping[str, Sequence[float]],
    path: str | Path,
    *,
    title: str,
    ylabel: str | None = None,
    rotate: bool = False,
) -> Path:
    """One bar chart of runs side by side: a group of bars per run, one bar per metric, each labelled with its value.

    Args:
        labels: one label per run (x axis).
        values: metric name (legend) -> one value per run.
        path: the PNG to write.
        title: the chart's title (say the dataset, device, commit).
        ylabel: the y axis label.
        rotate: slant long run labels.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.5 * len(labels) + 2, 3.8))
    width = 0.8 / len(values)
    for j, (metric, series) in enumerate(values.items()):
        offset = (j - (len(values) - 1) / 2) * width
        bars = ax.bar([i + offset for i in range(len(labels))], series, width, label=metric)
        ax.bar_label(bars, labels=[f"{v:.4f}" for v in series], fontsize=7)
    ax.set_xticks(range(len(labels)), labels, fontsize=7 if rotate else 8, rotation=20 if rotate else 0,
                  ha="right" if rotate else "center")
    if ylabel:
        ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"plot: {path}")
    return Path(path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m genrec.report", description=__doc__.splitlines()[0])
    parser.add_argument("--records", nargs="+", help=f"record folders (default: $GENREC_RECORDS or "
                                                     f"{DEFAULT_DIRS[0]}, and {DEFAULT_DIRS[1]})")
    parser.add_argument("--readme", help="write the table between the results markers of this file")
    parser.add_argument("--output", help="also write the table to this file")
    args = parser.parse_args(argv)
    try:
        if args.records:
            records = load_records(args.records)
        else:
            dirs = (os.environ.get("GENREC_RECORDS") or DEFAULT_DIRS[0], DEFAULT_DIRS[1])
            records = load_records(dirs, required=False)
        table = render(records)
        if args.readme:
            readme = Path(args.readme)
            readme.write_text(replace_in_readme(readme.read_text(), table, where=str(readme)))
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if args.output:
        Path(args.output).write_text(table)
    print(table, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
