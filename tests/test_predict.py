"""Batch inference and training past one process: recommend.py sharded by Lightning's predict loop over 2 CPU
processes (DDP on gloo) merges into exactly the single-process output, and train.py fits under DDP on 2 CPU
processes. The multi-process runs are real subprocesses: Lightning's launcher starts the other rank by running the
script's command line again."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch

import recommend
from genrec.seq2seq.inference import Recommender
from genrec.seq2seq.predict import (
    BatchBlocks,
    BatchRecommender,
    PositionedRequests,
    RequestData,
    ShardWriter,
    merge_shards,
    shard_path,
)
from tests.conftest import ROOT, TrainedWalk, cli_args, synthetic


def env() -> dict[str, str]:
    """The subprocesses' environment: this one as the test has it (GENREC_RECORDS in tmp), one thread per process
    (2 processes on the CI machine's 2 cores)."""
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def single(trained: TrainedWalk, out: Path, *args: str) -> bytes:
    """recommend.py's single-process output, run in this process."""
    assert recommend.main(["--checkpoint", str(trained.checkpoint), "--output", str(out), "--device", "cpu",
                           "--no-progress", *args]) == 0
    return out.read_bytes()


def sharded(trained: TrainedWalk, out: Path, *args: str) -> tuple[bytes, str]:
    """recommend.py on 2 CPU processes (a subprocess: Lightning re-runs its command line for rank 1)."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "recommend.py"), "--checkpoint", str(trained.checkpoint), "--output", str(out),
         "--devices", "2", "--accelerator", "cpu", *args],
        capture_output=True, text=True, timeout=300, env=env(), cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert not shard_path(out, 0, 2).parent.exists()  # merged, then removed
    return out.read_bytes(), result.stderr


def test_all_users_on_two_processes_equal_one_process(trained_walk, tmp_path):
    # 108 users in batches of 16: 7 batches, 4 on rank 0 and 3 on rank 1.
    args = ["--users", "all", "--holdout", "1", "--batch-size", "16"]
    expected = single(trained_walk, tmp_path / "single.jsonl", *args)
    got, stderr = sharded(trained_walk, tmp_path / "sharded.jsonl", *args)
    assert got == expected
    assert len(expected.splitlines()) == 108
    assert "recommend.py: 108 users, 0 errors, " in stderr and "users/s on cpu (1 thread) x2" in stderr


def test_an_input_file_with_bad_lines_keeps_its_error_lines_in_place(trained_walk, tmp_path):
    # Histories of different lengths (the batch's make-up matters to the last bits of the scores), a malformed
    # line, an unknown-only history and a blank line; batches of 3 put lines of both kinds on both ranks.
    lines = [
        json.dumps({"user": "a", "history": [4, 5, 6]}),
        json.dumps({"user": "unknown-only", "history": [999]}),
        '{"user": "broken", "history": [1, 2',
        json.dumps({"user": "b", "history": [7, 8, 999]}),
        "",
        json.dumps({"user": "c", "history": [12, 13, 14, 15, 16, 17]}),
        json.dumps({"user": "empty", "history": []}),
        json.dumps({"user": "d", "history": [20]}),
        json.dumps({"user": "e", "history": ["25", "26"]}),
    ]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    args = ["--input", str(tmp_path / "in.jsonl"), "--batch-size", "3"]
    expected = single(trained_walk, tmp_path / "single.jsonl", *args)
    got, stderr = sharded(trained_walk, tmp_path / "sharded.jsonl", *args, "--no-progress")
    assert got == expected
    out = [json.loads(line) for line in got.splitlines()]
    assert [o["user"] for o in out] == ["a", "unknown-only", None, "b", "c", "empty", "d", "e"]
    assert [o["line"] for o in out if "error" in o] == [2, 3, 7]
    assert "recommend.py: 8 users, 3 errors, " in stderr
    # Each rank parses only its own lines, so each warning is printed once.
    assert stderr.count("line 4: user \"b\": unknown item ids skipped: [999]") == 1


def test_fewer_batches_than_processes(trained_walk, tmp_path):
    # One batch: rank 1 has nothing to answer and must still write its (empty) shard and reach the barrier.
    expected = single(trained_walk, tmp_path / "single.jsonl", "--users", "40,999")
    got, stderr = sharded(trained_walk, tmp_path / "sharded.jsonl", "--users", "40,999", "--no-progress")
    assert got == expected and "recommend.py: 2 users, 1 errors, " in stderr


@pytest.mark.filterwarnings("ignore:Couldn't infer the batch indices")  # positions travel in the batches
def test_the_predict_loop_in_one_process_equals_recommender_run(trained_walk, tmp_path):
    recommender = Recommender.load(trained_walk.checkpoint, device="cpu")
    expected = list(recommender.run(recommender.dataset_requests(["1", "999", "40", "2"]), top_k=5, batch_size=3))
    requests = PositionedRequests.of_users(recommender, ["1", "999", "40", "2"], holdout=0)
    writer = ShardWriter(tmp_path / "out.jsonl", total=len(requests))
    trainer = pl.Trainer(accelerator="cpu", devices=1, callbacks=[writer], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.predict(BatchRecommender(recommender, top_k=5, beam_width=20),
                    datamodule=RequestData(requests, batch_size=3), return_predictions=False)
    assert (tmp_path / "out.jsonl").read_text().splitlines() == [json.dumps(line) for line in expected]
    assert (writer.summary.users, writer.summary.errors) == (4, 1)


def test_batch_blocks_deal_the_single_process_batches_to_the_ranks():
    def batches(n: int, rank: int, world: int, batch_size: int) -> list[list[int]]:
        sampler = BatchBlocks(n, batch_size=batch_size)
        sampler.rank, sampler.num_replicas = rank, world  # as DDP would set them
        assert len(sampler) == len(list(sampler))
        return list(sampler)

    assert batches(10, 0, 2, 3) == [[0, 1, 2], [6, 7, 8]]
    assert batches(10, 1, 2, 3) == [[3, 4, 5], [9]]
    assert sorted(p for r in range(3) for b in batches(23, r, 3, 4) for p in b) == list(range(23))
    assert batches(2, 2, 3, 4) == [[]]  # no batch for this rank: one empty one
    assert batches(0, 0, 1, 4) == [[]]


class _Trainer(SimpleNamespace):
    """What ShardWriter reads of a trainer, for one rank of a run whose ranks are simulated in turn."""

    def __init__(self, rank: int, world: int) -> None:
        strategy = SimpleNamespace(reduce=lambda tensor, reduce_op: tensor, barrier=lambda name=None: None)
        super().__init__(global_rank=rank, world_size=world, is_global_zero=rank == 0, strategy=strategy)


def _line(p: int) -> dict:
    return {"user": p, "error": "bad"} if p % 4 == 1 else {"user": p, "items": [p, p + 1], "scores": [-0.1, -2.5]}


def test_shards_written_out_of_order_merge_into_input_order(tmp_path):
    output = tmp_path / "out.jsonl"
    module = SimpleNamespace(device=torch.device("cpu"), recommender=SimpleNamespace(hashed_users=1))
    writers = {rank: ShardWriter(output, total=11) for rank in (0, 1)}
    trainers = {rank: _Trainer(rank, 2) for rank in (0, 1)}
    for rank in (1, 0):
        writers[rank].on_predict_start(trainers[rank], module)
    # Batches of 3 dealt as BatchBlocks deals them, written interleaved, rank 1 first.
    for rank, rows in [(1, [3, 4, 5]), (0, [0, 1, 2]), (1, [9, 10]), (0, [6, 7, 8])]:
        prediction = [(p, _line(p)) for p in rows]
        writers[rank].write_on_batch_end(trainers[rank], module, prediction, None, None, 0, 0)
    writers[1].on_predict_end(trainers[1], module)
    assert writers[1].summary is None and shard_path(output, 1, 2).is_file() and not output.exists()
    writers[0].on_predict_end(trainers[0], module)
    assert output.read_text().splitlines() == [json.dumps(_line(p)) for p in range(11)]
    assert (writers[0].summary.users, writers[0].summary.errors) == (11, 3)
    assert not shard_path(output, 0, 2).parent.exists()


def _write_shard(output: Path, rank: int, world: int, positions: list[int]) -> Path:
    path = shard_path(output, rank, world)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"position": p, "line": _line(p)}) + "\n" for p in positions))
    return path


def test_a_missing_shard_is_named_and_nothing_is_written(tmp_path):
    output = tmp_path / "out.jsonl"
    _write_shard(output, 0, 3, [0, 3])
    _write_shard(output, 2, 3, [2])
    with pytest.raises(FileNotFoundError, match=r"shard .*rank-00001-of-00003\.jsonl of rank 1 is missing"):
        merge_shards(output, world_size=3, total=4)
    assert not output.exists() and shard_path(output, 0, 3).is_file()


@pytest.mark.parametrize("shards,total,message", [
    ({0: [0, 2], 1: [1, 2]}, 3, r"position 2 is repeated \(.*rank-0000[01]-of-00002\.jsonl line 2\)"),
    ({0: [0, 4], 1: [1, 3]}, 5, r"position 2 is missing \(the next, 3, is .*rank-00001-of-00002\.jsonl line 2\)"),
    ({0: [0, 1, 0], 1: [2]}, 3, r"rank-00000-of-00002\.jsonl line 3: position 0 after 1"),
    ({0: [0, 2], 1: [1]}, 4, r"the shards hold 3 lines, expected 4"),
])
def test_a_bad_merge_is_refused_naming_where_and_leaves_no_output(shards, total, message, tmp_path):
    output = tmp_path / "out.jsonl"
    for rank, positions in shards.items():
        _write_shard(output, rank, 2, positions)
    with pytest.raises(ValueError, match=message):
        merge_shards(output, world_size=2, total=total)
    assert not output.exists() and not output.with_name("out.jsonl.partial").exists()
    assert shard_path(output, 0, 2).is_file()  # kept, to look at


@pytest.mark.parametrize("args,message", [
    (["--users", "all", "--devices", "2"], "sharded runs need --output"),
    (["--input", "-", "--output", "o.jsonl", "--devices", "2"], "stdin cannot be shared"),
    (["--output", "o.jsonl", "--strategy", "ddp"], "stdin cannot be shared"),
    (["--users", "1", "--output", "o.jsonl", "--devices", "2", "--device", "cpu"], "--device is for one process"),
])
def test_sharded_options_that_cannot_work_are_refused(args, message, capsys):
    with pytest.raises(SystemExit):
        recommend.parse_args(["--checkpoint", "x.ckpt", *args])
    assert message in capsys.readouterr().err


def test_ddp_training_on_two_cpu_processes(tmp_path):
    """train.py fit under DDP on 2 CPU processes: each rank trains on half the rows (BatchShards), so the run takes
    half the steps of one process, and the tested run's record names 2 processes."""
    from genrec.seq2seq.data import SemanticIdData

    dataset, tokenizer = synthetic(tmp_path)
    epochs, batch_size = 2, 64  # cli_args' batch size
    args = cli_args(dataset, tokenizer, tmp_path / "run", "--trainer.devices=2", "--trainer.strategy=ddp",
                    f"--trainer.max_epochs={epochs}", "--trainer.limit_val_batches=0", "--test_after_fit=true",
                    "--examples=0")
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), "fit", *args], capture_output=True, text=True,
                            timeout=300, env=env(), cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert "MEMBER: 1/2" in log and "MEMBER: 2/2" in log
    (checkpoint,) = (tmp_path / "run").rglob("*.ckpt")
    data = SemanticIdData(dataset=str(dataset), tokenizer=str(tokenizer), max_len=5)
    data.setup()
    rows = len(data.parts["train"])
    one_process = epochs * math.ceil(rows / batch_size)
    assert torch.load(checkpoint, weights_only=True)["global_step"] == epochs * math.ceil(rows // 2 / batch_size)
    assert epochs * math.ceil(rows // 2 / batch_size) < one_process
    (record,) = (tmp_path / "records").glob("*.json")  # GENREC_RECORDS: tests/conftest.py's _records_in_tmp
    assert json.loads(record.read_text())["device"] == "cpu (1 thread) x2"
