"""Shared fixtures: tiny datasets written to a temporary folder in each supported format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def write_sequences_dataset(root: Path, lines: list[str], items: list[dict] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "sequences.txt").write_text("\n".join(lines) + "\n")
    if items is not None:
        (root / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in items))
    return root


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
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _records_in_tmp(tmp_path, monkeypatch):
    """Tested runs write run records (genrec.report); tests keep theirs out of the repository's runs/records/."""
    monkeypatch.setenv("GENREC_RECORDS", str(tmp_path / "records"))
