"""recommend.py end to end: a tiny model trained through the CLI on the synthetic walk, then asked for items."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import recommend
from genrec.seq2seq.data import SemanticIdData
from genrec.seq2seq.module import GenerativeRecommender
from tests.conftest import N_ITEMS, ROOT, TrainedWalk, walk_title, write_sequences_dataset


@pytest.fixture
def trained(trained_walk: TrainedWalk) -> TrainedWalk:
    """The session's TIGER on the walk (tests/conftest.py), whose items have titles."""
    return trained_walk


def run(trained: TrainedWalk, tmp_path: Path, *args: str, lines: list[str] | None = None) -> list[dict]:
    """recommend.main in this process; ``lines`` become the --input file."""
    argv = ["--checkpoint", str(trained.checkpoint), "--output", str(tmp_path / "out.jsonl"), "--device", "cpu", *args]
    if lines is not None:
        (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
        argv += ["--input", str(tmp_path / "in.jsonl")]
    assert recommend.main(argv) == 0
    return [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]


def walk(start: int, length: int) -> list[int]:
    """Dataset item ids (1..27) of a walk; its next item is walk(start, length + 1)[-1]."""
    return [(start - 1 + t) % N_ITEMS + 1 for t in range(length)]


def test_top1_of_a_walk_is_the_next_item(trained, tmp_path):
    # Short, exactly max_len (5), longer than max_len (the most recent items count), and wrapping past item 27.
    histories = [walk(3, 3), walk(10, 5), walk(20, 12), walk(25, 3), walk(1, 1)]
    lines = [json.dumps({"user": f"u{n}", "history": h}) for n, h in enumerate(histories)]
    out = run(trained, tmp_path, "--top-k", "5", lines=lines)
    assert [o["user"] for o in out] == [f"u{n}" for n in range(len(histories))]
    for o, h in zip(out, histories):
        next_item = walk(h[0], len(h) + 1)[-1]
        assert o["items"][0] == next_item, (h, o)  # dataset ids: dense indices would be one lower
        assert len(o["items"]) == len(set(o["items"])) == 5 and set(o["items"]) <= set(range(1, N_ITEMS + 1))
        assert o["scores"] == sorted(o["scores"], reverse=True) and all(s <= 0 for s in o["scores"])
        assert o["titles"] == [walk_title(i) for i in o["items"]]
    assert any("Soap & Sponge" in o["titles"] for o in out)


def test_users_mode_equals_model_recommend_on_the_test_histories(trained, tmp_path):
    out = run(trained, tmp_path, "--users", "all", "--holdout", "1", "--top-k", "10")
    # The oracle: the datamodule's own leave-one-out test inputs through GenerativeRecommender.recommend.
    dm = SemanticIdData(dataset=str(trained.dataset), tokenizer=str(trained.tokenizer), max_len=5)
    dm.setup()
    test = dm.parts["test"].materialize()
    model = GenerativeRecommender.load_from_checkpoint(trained.checkpoint, map_location="cpu").eval()
    expected = model.recommend(test["input_ids"], test["attention_mask"], top_k=10)
    ids = dm.dataset.item_ids
    assert [o["user"] for o in out] == [dm.dataset.user_ids[u] for u in test["users"].tolist()]
    assert [o["items"] for o in out] == [[ids[i] for i in row] for row in expected.items.tolist()]
    torch.testing.assert_close(torch.tensor([o["scores"] for o in out]), expected.scores, rtol=1e-5, atol=1e-5)
    assert sum(o["items"][0] == ids[t] for o, t in zip(out, test["target"].tolist())) >= 0.9 * len(out)


def test_users_mode_uses_full_sequences_like_json_histories(trained, tmp_path):
    # Users 1 and 40 walk 8 items from items 1 and 40 % 27: the answer is the 9th item of their walk.
    out = run(trained, tmp_path, "--users", "1, 40,999")
    assert [o["user"] for o in out] == [1, 40, "999"]
    assert [o["items"][0] for o in out[:2]] == [walk(1, 9)[-1], walk(40, 9)[-1]]
    assert "not in dataset" in out[2]["error"]
    lines = [json.dumps({"user": u, "history": walk(u, 8)}) for u in (1, 40)]
    assert run(trained, tmp_path, lines=lines) == out[:2]


def test_bad_lines_give_error_lines_and_the_rest_of_the_batch_is_answered(trained, tmp_path, caplog):
    lines = [
        json.dumps({"user": "a", "history": walk(4, 3)}),
        json.dumps({"user": "empty", "history": []}),
        json.dumps({"user": "b", "history": [*walk(7, 3), 999, "nope"]}),  # unknown ids: skipped, warned
        '{"user": "broken", "history": [1, 2',
        "",  # blank: ignored
        json.dumps({"user": "unknown-only", "history": [999]}),
        json.dumps([1, 2, 3]),
        json.dumps({"user": "no-history"}),
        json.dumps({"user": "c", "history": ["12", "13"]}),  # integer ids written as strings
    ]
    with caplog.at_level(logging.WARNING):
        out = run(trained, tmp_path, "--batch-size", "16", lines=lines)
    assert [o.get("user") for o in out] == ["a", "empty", "b", None, "unknown-only", None, "no-history", "c"]
    assert [o["items"][0] for o in out if "items" in o] == [7, 10, 14]
    errors = {o["line"]: o["error"] for o in out if "error" in o}
    assert set(errors) == {2, 4, 6, 7, 8}
    assert "line 2: the history is empty" in errors[2]
    assert "line 4: invalid JSON" in errors[4]
    assert "line 6: no item id in the history is in the dataset" in errors[6]
    assert "expected a JSON object" in errors[7] and 'expected "history"' in errors[8]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("line 3" in w and '"b"' in w and '[999, "nope"]' in w for w in warnings), warnings


def test_stdin_to_stdout_with_a_summary_on_stderr(trained):
    stdin = json.dumps({"user": 1, "history": walk(2, 4)}) + "\n" + json.dumps({"user": 2, "history": [1000]}) + "\n"
    result = subprocess.run(
        [sys.executable, str(ROOT / "recommend.py"), "--checkpoint", str(trained.checkpoint), "--top-k", "3"],
        input=stdin, capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = [json.loads(line) for line in result.stdout.splitlines()]
    assert out[0]["user"] == 1 and out[0]["items"][0] == 6 and len(out[0]["items"]) == 3
    assert out[1] == {"user": 2, "line": 2, "error": "<stdin> line 2: no item id in the history is in the dataset"}
    assert "<stdin> line 2: user 2: unknown item ids skipped: [1000]" in result.stderr
    assert "recommend.py: 2 users, 1 errors" in result.stderr and "users/s" in result.stderr


def test_a_dataset_with_other_items_is_refused(trained, tmp_path, capsys):
    other = write_sequences_dataset(tmp_path / "other", ["1 1 2 3", "2 3 2 1"])
    code = recommend.main(["--checkpoint", str(trained.checkpoint), "--dataset", str(other), "--users", "all"])
    assert code == 2
    assert f"was trained on dataset {str(trained.dataset)!r}, not {str(other)!r}" in capsys.readouterr().err
    # Another dataset with the same 27 items is refused the same way: item counts are no identity.
    twin = write_sequences_dataset(tmp_path / "twin", [f"{u} " + " ".join(str(i) for i in range(1, 28)) for u in (1, 2)])
    assert recommend.main(["--checkpoint", str(trained.checkpoint), "--dataset", str(twin), "--users", "1"]) == 2
    assert "was trained on dataset" in capsys.readouterr().err
    # The dataset it was trained on, named by another spelling of its path, is accepted.
    assert recommend.main(["--checkpoint", str(trained.checkpoint), "--dataset", f"{trained.dataset}/", "--users", "1",
                           "--output", str(tmp_path / "o.jsonl")]) == 0
    with pytest.raises(SystemExit):
        recommend.main(["--checkpoint", str(trained.checkpoint), "--input", "-", "--holdout", "1"])


class _RunsCode:
    """Unpickling this calls ``Path.touch`` on a marker: what a crafted checkpoint would do with a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _bad_checkpoint(kind: str, trained: TrainedWalk, path: Path) -> None:
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        data = trained.checkpoint.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "garbage":
        path.write_bytes(bytes(range(256)) * 8)
    elif kind == "code":
        torch.save({"state_dict": {}, "hyper_parameters": {"x": _RunsCode(path.with_suffix(".ran"))}}, path)
    elif kind == "not lightning":
        torch.save({"weights": torch.zeros(3)}, path)


@pytest.mark.parametrize("kind,message", [
    ("empty", "is empty"), ("truncated", "not a readable PyTorch checkpoint"),
    ("garbage", "not a readable PyTorch checkpoint"), ("code", "other than tensors and plain data, refused"),
    ("not lightning", "not a Lightning checkpoint"),
])
def test_bad_checkpoints_are_refused_in_one_line_without_running_code(kind, message, trained, tmp_path, capsys):
    bad = tmp_path / "bad.ckpt"
    _bad_checkpoint(kind, trained, bad)
    assert recommend.main(["--checkpoint", str(bad), "--users", "1", "--device", "cpu"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("recommend.py: error: checkpoint ") and str(bad) in error and message in error, error
    assert "\n" not in error
    assert not bad.with_suffix(".ran").exists()  # the crafted object was never unpickled into a call


def test_a_line_that_is_not_utf8_or_holds_nan_is_an_error_line_and_its_batch_is_still_answered(trained, tmp_path):
    good = [json.dumps({"user": u, "history": walk(s, 3)}).encode() for u, s in (("a", 4), ("b", 7), ("c", 11))]
    lines = [good[0], b'{"user": "caf\xe9", "history": [1, 2]}', good[1], b'{"user": NaN, "history": [1, 2]}',
             b'{"user": "inf", "history": [Infinity]}', good[2]]
    (tmp_path / "in.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    argv = ["--checkpoint", str(trained.checkpoint), "--input", str(tmp_path / "in.jsonl"), "--output",
            str(tmp_path / "out.jsonl"), "--device", "cpu", "--batch-size", "16"]
    assert recommend.main(argv) == 0
    text = (tmp_path / "out.jsonl").read_text(encoding="utf-8")
    out = [json.loads(line, parse_constant=lambda name: pytest.fail(f"{name} in the output")) for line in text.splitlines()]
    assert [o["items"][0] for o in out if "items" in o] == [7, 10, 14]  # the good lines around the bad ones
    errors = {o["line"]: o["error"] for o in out if "error" in o}
    assert set(errors) == {2, 4, 5}
    assert "in.jsonl line 2: not UTF-8 text (byte 13: invalid continuation byte)" in errors[2]
    assert "line 4: invalid JSON (NaN is not a JSON value)" in errors[4]
    assert "line 5: invalid JSON (Infinity is not a JSON value)" in errors[5]
