"""Dataset formats, dense re-indexing, the leave-one-out protocol and bad-input errors."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from genrec.data import DataFormatError, SequenceDataset, leave_one_out, load_dataset
from genrec.data.__main__ import main as data_main
from tests.conftest import write_sequences_dataset


def test_sequences_format_reindexes_densely(tiny_dataset):
    ds = load_dataset(tiny_dataset)
    assert ds.item_ids == [10, 20, 30, 40, 50]
    assert ds.user_ids == [1, 2, 7]
    assert [s.tolist() for s in ds.sequences] == [[0, 1, 2, 3], [1, 2], [3, 0, 4, 1, 2, 0]]
    assert ds.items[0]["title"] == "Red &amp; Blue Lipstick"
    stats = ds.stats()
    assert (stats["users"], stats["items"], stats["interactions"]) == (3, 5, 12)
    assert stats["max_seq_len"] == 6 and stats["avg_seq_len"] == 4.0 and stats["has_text"]


def test_gzip_files_read_the_same(tiny_dataset, tmp_path):
    gz = tmp_path / "gz"
    gz.mkdir()
    for name in ("sequences.txt", "items.jsonl"):
        (gz / f"{name}.gz").write_bytes(gzip.compress((tiny_dataset / name).read_bytes()))
    a, b = load_dataset(tiny_dataset), load_dataset(gz)
    assert a.item_ids == b.item_ids and all((x == y).all() for x, y in zip(a.sequences, b.sequences))
    assert a.items == b.items


def test_leave_one_out_by_hand(tiny_dataset):
    split = leave_one_out(load_dataset(tiny_dataset), max_len=3)
    # user 0: [0,1,2,3] -> train [0,1], valid 2, test 3; user 1: [1,2] -> test only; user 2: [3,0,4,1,2,0]
    assert split.test.target.tolist() == [3, 2, 0]
    assert split.test.history.tolist() == [[0, 1, 2], [-1, -1, 1], [4, 1, 2]]
    assert split.valid.target.tolist() == [2, 2]
    assert split.valid.users.tolist() == [0, 2]
    assert split.valid.history.tolist() == [[-1, 0, 1], [0, 4, 1]]
    # sliding windows over each training part: user 0 [0,1] -> (0 -> 1); user 2 [3,0,4,1] -> 3 windows
    assert split.train.users.tolist() == [0, 2, 2, 2]
    assert split.train.target.tolist() == [1, 0, 4, 1]
    assert split.train.history.tolist() == [[-1, -1, 0], [-1, -1, 3], [-1, 3, 0], [3, 0, 4]]
    assert split.skipped == {"valid": 1, "test": 0, "train": 1}
    assert split.test.lengths.tolist() == [3, 1, 3]


def _reference_split(sequences: list[np.ndarray], max_len: int) -> dict[str, tuple[list, list, list]]:
    """leave_one_out written the plain way, one user and one window at a time."""
    def last(items):
        items = list(items)[-max_len:]
        return [-1] * (max_len - len(items)) + items

    out = {"train": ([], [], []), "valid": ([], [], []), "test": ([], [], [])}
    for u, seq in enumerate(sequences):
        seq = seq.tolist()
        if len(seq) >= 2:
            out["test"][0].append(u), out["test"][1].append(last(seq[:-1])), out["test"][2].append(seq[-1])
        if len(seq) >= 3:
            out["valid"][0].append(u), out["valid"][1].append(last(seq[:-2])), out["valid"][2].append(seq[-2])
        train = seq[:-2]
        for t in range(1, len(train)):
            out["train"][0].append(u), out["train"][1].append(last(train[:t])), out["train"][2].append(train[t])
    return out


@pytest.mark.parametrize("max_len", [1, 3, 20])
def test_vectorised_split_equals_the_plain_definition(max_len):
    rng = np.random.default_rng(max_len)
    sequences = [rng.integers(0, 50, size=int(m)) for m in rng.integers(1, 30, size=200)]
    ds = SequenceDataset(name="random", user_ids=list(range(200)), item_ids=list(range(50)), sequences=sequences)
    split = leave_one_out(ds, max_len=max_len)
    for name, (users, history, target) in _reference_split(sequences, max_len).items():
        samples = getattr(split, name)
        assert samples.users.tolist() == users and samples.target.tolist() == target, name
        assert samples.history.tolist() == history, name
        assert samples.history.dtype == np.int64 and samples.history.shape == (len(target), max_len)


def test_history_truncated_to_most_recent(tmp_path):
    ds = load_dataset(write_sequences_dataset(tmp_path / "long", ["1 " + " ".join(map(str, range(1, 31)))]))
    split = leave_one_out(ds, max_len=20)
    assert split.test.history[0].tolist() == list(range(9, 29))  # dense = id - 1; the 20 items before the last
    assert len(split.train) == 27


def test_interactions_csv_sorted_by_time_with_header_and_k_core(tmp_path):
    rows = ["user,item,timestamp,rating"]
    rows += ["a,x,3,5", "a,y,1,4", "a,z,2,3", "b,x,5,1", "b,y,4,2", "c,w,1,1"]
    (tmp_path / "inter.csv").write_text("\n".join(rows) + "\n")
    ds = load_dataset(tmp_path / "inter.csv")
    assert ds.user_ids == ["a", "b", "c"] and ds.item_ids == ["w", "x", "y", "z"]
    assert [[ds.item_ids[i] for i in s] for s in ds.sequences] == [["y", "z", "x"], ["y", "x"], ["w"]]
    core = load_dataset(tmp_path / "inter.csv", k_core_min=2)
    assert core.user_ids == ["a", "b"] and core.item_ids == ["x", "y"]
    assert core.dropped == {"2core_users": 1, "2core_items": 2, "2core_interactions": 2}


def test_interactions_tsv_without_header(tmp_path):
    (tmp_path / "t.tsv").write_text("1\t5\t100\n1\t6\t50\n2\t5\t1\n")
    ds = load_dataset(tmp_path / "t.tsv")
    assert [[ds.item_ids[i] for i in s] for s in ds.sequences] == [["6", "5"], ["5"]]


def test_recbole_atomic_files(tmp_path):
    d = tmp_path / "ml"
    d.mkdir()
    (d / "ml.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        "1\t10\t5\t300\n1\t11\t3\t100\n2\t10\t4\t50\n2\t12\t4\t60\n"
    )
    (d / "ml.item").write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "10\tToy Story\t1995\tAnimation Comedy\n11\tHeat\t1995\tAction\n12\tCasino\t1995\tDrama\n"
    )
    ds = load_dataset(d)
    assert [[ds.item_ids[i] for i in s] for s in ds.sequences] == [["11", "10"], ["10", "12"]]
    assert ds.items[0] == {"movie_title": "Toy Story", "release_year": "1995", "class": "Animation Comedy"}
    assert load_dataset(d / "ml.inter").item_ids == ds.item_ids


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["1 2 3", "2 4 x"], "tiny/sequences.txt:2: expected an integer item id, got 'x'"),
        (["u1 2 3"], "sequences.txt:1: expected an integer user id"),
        (["1 2 3", "2"], "sequences.txt:2: user 2 has no items"),
        (["1 2 3", "2 4", "1 5"], "sequences.txt:3: user 1 is listed twice (first on line 1)"),
        ([""], "no users found (empty dataset)"),
    ],
)
def test_bad_sequences_name_file_and_line(tmp_path, lines, message):
    path = write_sequences_dataset(tmp_path / "tiny", lines)
    with pytest.raises(DataFormatError) as e:
        load_dataset(path)
    assert message in str(e.value)


def test_bad_items_jsonl(tmp_path):
    path = write_sequences_dataset(tmp_path / "a", ["1 1 2"])
    (path / "items.jsonl").write_text('{"item_id": 1, "title": "x"}\n{"item_id": 2, "title": \n')
    with pytest.raises(DataFormatError, match=r"items.jsonl:2: malformed JSON"):
        load_dataset(path)
    (path / "items.jsonl").write_text('{"item_id": 1}\n{"title": "y"}\n')
    with pytest.raises(DataFormatError, match=r"items.jsonl:2: expected a JSON object with an \"item_id\""):
        load_dataset(path)
    (path / "items.jsonl").write_text('{"item_id": 1}\n{"item_id": 1}\n')
    with pytest.raises(DataFormatError, match=r"items.jsonl:2: item 1 is listed twice"):
        load_dataset(path)


def test_item_missing_text_is_an_error_when_required_and_counted_otherwise(tmp_path):
    path = write_sequences_dataset(tmp_path / "m", ["1 1 2 3"], [{"item_id": 1, "title": "a"}, {"item_id": 9}])
    with pytest.raises(DataFormatError, match=r"2 items in the sequences have no entry in the item file, e\.g\. \[2, 3\]"):
        load_dataset(path, require_text=True)
    ds = load_dataset(path)
    assert ds.dropped == {"items_without_text": 2, "item_records_not_in_sequences": 1}
    assert ds.items == [{"title": "a"}, {}, {}]


def test_csv_columns_are_chosen_by_their_header_names(tmp_path):
    # MovieLens' own ratings.csv: the timestamp is the 4th column and the rating the 3rd.
    (tmp_path / "ml.csv").write_text("userId,movieId,rating,timestamp\n1,10,5,300\n1,20,1,100\n1,30,3,200\n2,10,4,9\n")
    ds = load_dataset(tmp_path / "ml.csv")
    assert [[ds.item_ids[i] for i in s] for s in ds.sequences] == [["20", "30", "10"], ["10"]]
    # Extra columns are ignored; names are case- and separator-insensitive.
    (tmp_path / "x.tsv").write_text("Item_ID\tsession\tUser-Id\tTime\na\tq\tu1\t2\nb\tq\tu1\t1\n")
    ds = load_dataset(tmp_path / "x.tsv")
    assert ds.user_ids == ["u1"] and [[ds.item_ids[i] for i in s] for s in ds.sequences] == [["b", "a"]]


@pytest.mark.parametrize(("header", "message"), [
    ("user,item,rating", r"header 'user,item,rating' has no timestamp column; name the columns user,item,timestamp"),
    ("userId,movieId,timestamp,time", r"header names 2 timestamp columns \('timestamp', 'time'\): keep one"),
    ("a,b,c", r"header 'a,b,c' has no user / item / timestamp column"),
])
def test_a_header_that_does_not_say_which_column_is_which_is_refused(tmp_path, header, message):
    (tmp_path / "h.csv").write_text(f"{header}\n1,2,3,4\n")
    with pytest.raises(DataFormatError, match=r"h.csv:1: " + message):
        load_dataset(tmp_path / "h.csv")


def test_bad_csv_and_recbole(tmp_path):
    (tmp_path / "a.csv").write_text("u,i,t\n1,2,3\n1,2\n")
    with pytest.raises(DataFormatError, match=r"a.csv:3: expected at least 3 columns \(as the header names\), got 2"):
        load_dataset(tmp_path / "a.csv")
    (tmp_path / "b.csv").write_text("1,2,3\n1,2,later\n")
    with pytest.raises(DataFormatError, match=r"b.csv:2: expected a numeric timestamp, got 'later'"):
        load_dataset(tmp_path / "b.csv")
    (tmp_path / "c.csv").write_text("user,item,timestamp\n")
    with pytest.raises(DataFormatError, match="empty dataset"):
        load_dataset(tmp_path / "c.csv")
    (tmp_path / "d.inter").write_text("user_id:token\titem:token\n1\t2\n")
    with pytest.raises(DataFormatError, match=r"d.inter:1: header has no 'item_id' column"):
        load_dataset(tmp_path / "d.inter")
    with pytest.raises(FileNotFoundError, match="neither a bundled dataset"):
        load_dataset(tmp_path / "nope")


def test_stats_cli_on_formats(tmp_path, tiny_dataset, capsys):
    (tmp_path / "i.csv").write_text("u,i,t\n1,a,1\n1,b,2\n2,a,3\n")
    assert data_main(["stats", str(tmp_path / "i.csv")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["users"], out["items"], out["interactions"], out["has_text"]) == (2, 2, 3, False)
    assert data_main(["stats", str(tiny_dataset)]) == 0
    assert json.loads(capsys.readouterr().out)["has_text"] is True
    bad = write_sequences_dataset(tmp_path / "bad", ["1 2 x"])
    assert data_main(["stats", str(bad)]) == 2
    assert "sequences.txt:1: expected an integer item id" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("name", "users", "items", "interactions"),
    [("amazon-beauty", 22363, 12101, 198502), ("amazon-sports", 35598, 18357, 296337)],
)
def test_bundled_datasets(name, users, items, interactions, capsys):
    assert data_main(["stats", name]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["users"], out["items"], out["interactions"]) == (users, items, interactions)
    assert out["has_text"] is (name == "amazon-beauty")
    assert out["test_samples"] == users and out["valid_samples"] == users  # 5-core: every user has >= 5 items


def test_bundled_beauty_items_all_have_text():
    ds = load_dataset("amazon-beauty", require_text=True)
    assert len(ds.items) == ds.n_items and all(r.get("title") for r in ds.items)
    assert ds.item_ids[:3] == [1, 2, 3] and isinstance(ds.sequences[0], np.ndarray)


def test_bytes_that_are_not_utf8_and_truncated_gzip_are_errors_naming_file_and_line(tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "sequences.txt").write_bytes(b"1 2 3\n2 3 4\n3 4 \xff5\n")
    with pytest.raises(DataFormatError, match=r"sequences.txt:3: not UTF-8 text \(byte 4: invalid start byte\)"):
        load_dataset(tmp_path / "bad")
    (tmp_path / "t.csv").write_bytes("user,item,timestamp\nA,caf\u00e9,1\n".encode("latin-1"))
    with pytest.raises(DataFormatError, match=r"t.csv:2: not UTF-8 text"):
        load_dataset(tmp_path / "t.csv")
    whole = gzip.compress(("".join(f"{u} {u + 1} {u + 2}\n" for u in range(1, 2000))).encode())
    (tmp_path / "gz").mkdir()
    (tmp_path / "gz" / "sequences.txt.gz").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataFormatError, match=r"sequences.txt.gz:\d+: truncated or corrupt gzip file"):
        load_dataset(tmp_path / "gz")


def test_an_empty_recbole_id_is_an_error_not_a_user(tmp_path):
    d = tmp_path / "rb"
    d.mkdir()
    (d / "rb.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n1\t5\t1\n\t6\t2\n")
    with pytest.raises(DataFormatError, match=r"rb.inter:3: empty user_id"):
        load_dataset(d)


def test_train_py_reports_bad_data_in_one_line_with_exit_2(tmp_path):
    root = Path(__file__).resolve().parents[1]
    bad = write_sequences_dataset(tmp_path / "bad", ["1 2 3", "1 4 5"])
    result = subprocess.run(
        [sys.executable, "train.py", "fit", "--config", "configs/base/baseline.yaml", "--config",
         "configs/sasrec/beauty.yaml", f"--data.init_args.dataset={bad}", "--trainer.logger=false"],
        cwd=root, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if "Traceback" in line or line.startswith("train.py:")]
    assert errors == [f"train.py: error: {bad}/sequences.txt:2: user 1 is listed twice (first on line 1)"]


def _brute_force_trim(batch: dict, mask: str, names: tuple[str, ...]) -> dict:
    """The leading columns where ``mask`` is 0 in every row, dropped by looking at the batch itself."""
    import torch

    real = batch[mask].bool().any(0)
    start = int(real.int().argmax()) if bool(real.any()) else 0
    return {k: v[:, start:] if k in names else v for k, v in batch.items()}


def test_token_batches_trim_from_host_side_starts_exactly_as_by_looking_at_the_batch():
    import torch

    from genrec.data.loading import TokenBatches

    g = torch.Generator().manual_seed(0)
    n, width = 40, 9
    lengths = torch.randint(0, width + 1, (n,), generator=g)  # 0: a row of padding only
    left = (torch.arange(width) >= width - lengths[:, None]).long()  # left-padded
    scattered = (torch.rand(n, width, generator=g) < 0.3).long()  # any pattern: trimming is column-wise
    for mask in (left, scattered):
        tensors = {"attention_mask": mask, "input_ids": mask * torch.arange(1, width + 1), "target": torch.arange(n)}
        part = TokenBatches(tensors, trim=("input_ids", "attention_mask"))
        assert part.to("cpu") is part and part.device.type == "cpu"
        for rows in ([0], [3, 1, 4], list(range(n)), torch.randperm(n, generator=g)[:7].tolist(),
                     [int(i) for i in torch.nonzero(lengths == 0)[:2, 0]]):
            if not rows:
                continue
            got = part[rows]
            want = _brute_force_trim({k: v[rows] for k, v in tensors.items()}, "attention_mask",
                                     ("input_ids", "attention_mask"))
            assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got), rows


def test_on_device_keeps_the_parts_on_the_trainers_device(tmp_path):
    from types import SimpleNamespace

    import torch

    from genrec.seq2seq.data import SemanticIdData
    from tests.conftest import synthetic

    dataset, tokenizer = synthetic(tmp_path)
    host = SemanticIdData(dataset=str(dataset), tokenizer=str(tokenizer), max_len=5, batch_size=16)
    data = SemanticIdData(dataset=str(dataset), tokenizer=str(tokenizer), max_len=5, batch_size=16, on_device=True)
    for dm in (host, data):
        dm.setup("fit")
    assert data._device() == torch.device("cpu")  # no trainer yet: the host
    data.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cpu")))
    loader = data.train_dataloader()
    assert loader.num_workers == 0 and not loader.pin_memory
    first, expected = next(iter(loader)), next(iter(host.train_dataloader()))
    assert all(torch.equal(first[k], expected[k]) for k in expected)  # the same batches, in the same order


@pytest.mark.gpu
def test_on_device_batches_are_gathered_on_the_gpu_and_equal_the_host_ones(tmp_path):
    from types import SimpleNamespace

    import torch

    from genrec.seq2seq.data import SemanticIdData
    from tests.conftest import synthetic

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    dataset, tokenizer = synthetic(tmp_path)
    host = SemanticIdData(dataset=str(dataset), tokenizer=str(tokenizer), max_len=5, batch_size=16)
    data = SemanticIdData(dataset=str(dataset), tokenizer=str(tokenizer), max_len=5, batch_size=16, on_device=True)
    for dm in (host, data):
        dm.setup("fit")
    data.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cuda:0")))
    for got, want in zip(data.train_dataloader(), host.train_dataloader()):
        assert all(v.is_cuda for v in got.values())
        assert all(torch.equal(got[k].cpu(), want[k]) for k in want)
