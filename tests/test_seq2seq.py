"""The generative recommender through the real pipeline: CLI, DataModule, T5, constrained beam search, metrics."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys

import pytest
import torch
from lightning.pytorch import Callback

from genrec.cli import main
from genrec.data import leave_one_out
from genrec.data.loading import BatchShards, TokenBatches
from genrec.metrics import list_errors, ranking_metrics
from genrec.seq2seq.data import SemanticIdData, encode_histories
from genrec.seq2seq.module import GenerativeRecommender, T5Architecture
from tests.conftest import N_ITEMS, ROOT, cli_args, synthetic, write_sequences_dataset

def test_metrics_by_hand():
    items = torch.tensor([[3, 1, 2] + [9] * 17, [5, 6, 7] + [8] * 17, [0, 1, 4] + list(range(10, 27))])
    target = torch.tensor([3, 7, 26])  # ranks 0, 2, 19
    m = ranking_metrics(items, target)
    assert m["recall@1"].tolist() == [1, 0, 0]
    assert m["recall@5"].tolist() == [1, 1, 0]
    assert m["recall@20"].tolist() == [1, 1, 1]
    assert m["ndcg@5"].tolist() == pytest.approx([1.0, 0.5, 0.0])
    assert m["ndcg@20"][2].item() == pytest.approx(1 / torch.log2(torch.tensor(21.0)).item())
    errors = list_errors(torch.tensor([[0, 1, 1, -1], [0, 1, 2, 3]]), n_items=3)
    assert errors["invalid"].tolist() == [0.25, 0.25] and errors["repeated"].tolist() == [0.25, 0.0]


def test_datamodule_tokens(tmp_path):
    dataset, tokenizer = synthetic(tmp_path, users=N_ITEMS, length=6)
    dm = SemanticIdData(dataset=str(dataset), tokenizer=str(tokenizer), max_len=3, user_buckets=5)
    dm.setup()
    assert dm.level_sizes == (3, 3, 3, 1) and dm.vocab.size == 2 + 10 + 5
    test = dm.parts["test"].materialize()
    # user 0 walks items 0..5: test target 5, history 2, 3, 4 -> codes (0,0,2,0) (0,1,0,0) (0,1,1,0)
    assert test["target"][0].item() == 5
    offsets = torch.tensor(dm.vocab.offsets)
    expected = torch.cat([torch.tensor([[0, 0, 2, 0], [0, 1, 0, 0], [0, 1, 1, 0]]) + offsets]).flatten()
    assert test["input_ids"][0, 0].item() == dm.vocab.user_offset + 0
    assert test["input_ids"][0, 1:].tolist() == expected.tolist()
    assert test["labels"][0].tolist() == (torch.tensor([0, 1, 2, 0]) + offsets).tolist()
    train = dm.parts["train"]
    assert len(train) == N_ITEMS * 3  # windows over the 4-item training parts
    batch = train[[0, 1]]
    assert batch["input_ids"].shape == (2, 1 + 3 * 4) and (batch["attention_mask"] == (batch["input_ids"] != 0)).all()


@pytest.mark.parametrize("buckets", [0, 5])
def test_parts_store_item_indices_and_their_batches_equal_tokens_encoded_up_front(tmp_path, buckets):
    dataset, tokenizer = synthetic(tmp_path, users=N_ITEMS, length=9)
    dm = SemanticIdData(dataset=str(dataset), tokenizer=str(tokenizer), max_len=6, user_buckets=buckets)
    dm.setup()
    train = dm.parts["train"]
    assert set(train.tensors) == {"history", "users", "target"} and train.tensors["history"].dtype == torch.int32
    samples = leave_one_out(dm.dataset, max_len=6).train
    eager = encode_histories(torch.from_numpy(samples.history), table=dm.token_table(), vocab=dm.vocab,
                             users=torch.from_numpy(samples.users))
    rows = [7, 0, 30, 31]
    batch = train[rows]
    width = batch["input_ids"].shape[1]
    assert torch.equal(batch["input_ids"], eager["input_ids"][rows][:, -width:])
    assert not eager["attention_mask"][rows][:, :-width].any()  # only all-padding columns were dropped
    assert torch.equal(batch["labels"], dm.token_table()[torch.from_numpy(samples.target[rows]), : dm.vocab.levels])
    assert batch["history"].dtype == torch.long and torch.equal(batch["history"], torch.from_numpy(samples.history[rows]))
    # The first real columns are counted in chunks: any chunk size gives the same.
    again = TokenBatches(train.tensors, trim=train.trim, derive=train.derive, chunk_rows=7)
    assert torch.equal(again.first_real, train.first_real)
    stored = sum(t.numel() * t.element_size() for t in train.tensors.values())
    encoded = sum(t.numel() * t.element_size() for t in eager.values())
    assert stored * 8 < encoded  # what the lazy tokens save (16x on 4-token IDs)


def test_batches_drop_all_padding_columns_exactly(tmp_path):
    dataset, tokenizer = synthetic(tmp_path, users=N_ITEMS, length=6)
    dm = SemanticIdData(dataset=str(dataset), tokenizer=str(tokenizer), max_len=10)
    dm.setup()
    full = {k: v[:4] for k, v in dm.parts["train"].materialize().items()}
    trimmed = dm.parts["train"][[0, 1, 2, 3]]
    longest = int(full["attention_mask"].sum(1).max())
    assert trimmed["input_ids"].shape == (4, longest) and full["input_ids"].shape == (4, 40)
    assert torch.equal(trimmed["input_ids"], full["input_ids"][:, -longest:])
    torch.manual_seed(0)
    model = GenerativeRecommender(level_sizes=dm.level_sizes, arch=T5Architecture(
        d_model=16, encoder_layers=1, decoder_layers=1, num_heads=2, d_kv=8, d_ff=24, dropout=0.0)).eval()
    a = model(full["input_ids"], full["attention_mask"], full["labels"])
    b = model(trimmed["input_ids"], trimmed["attention_mask"], trimmed["labels"])
    torch.testing.assert_close(a, b)


def test_datamodule_rejects_mismatched_tokenizer(tmp_path):
    dataset, tokenizer = synthetic(tmp_path)
    other = write_sequences_dataset(tmp_path / "other", ["1 1 2 3"])
    with pytest.raises(ValueError, match="has 27 items but dataset .* has 3"):
        SemanticIdData(dataset=str(other), tokenizer=str(tokenizer))
    with pytest.raises(FileNotFoundError, match="does not exist: fit it first"):
        SemanticIdData(dataset=str(dataset), tokenizer=str(tmp_path / "missing"))


def test_learns_deterministic_rule_and_decodes_only_valid_items(trained_walk):
    metrics = trained_walk.metrics
    assert metrics["test/recall@1"] >= 0.9
    assert metrics["test/invalid"] == 0 and metrics["test/repeated"] == 0
    assert metrics["test/recall@20"] == 1.0  # every list holds 20 distinct real items, the target among them
    out = trained_walk.stdout
    assert "recommended:" in out and "next item (held out)" in out
    assert json.loads([line for line in out.splitlines() if line.startswith('{"test/')][0])["test/recall@1"] >= 0.9


class InterruptAt(Callback):
    """Stops a run as a crash would, at the start of an epoch (the last checkpoint is complete)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            raise KeyboardInterrupt


def test_checkpoint_resume_reaches_the_same_result(tmp_path):
    dataset, tokenizer = synthetic(tmp_path, users=40)
    common = ["--trainer.max_epochs=4", "--trainer.deterministic=true"]
    full = main(["fit", *cli_args(dataset, tokenizer, tmp_path / "full", *common)])
    with pytest.raises(SystemExit):
        main(["fit", *cli_args(dataset, tokenizer, tmp_path / "part", *common),
              "--trainer.callbacks+=tests.test_seq2seq.InterruptAt", "--trainer.callbacks.epoch=2"])
    ckpts = sorted((tmp_path / "part").rglob("*.ckpt"))
    assert [c.name for c in ckpts] == ["epoch=1-step=8.ckpt"]
    resumed = main(["fit", *cli_args(dataset, tokenizer, tmp_path / "part", *common), f"--ckpt_path={ckpts[0]}"])
    a, b = full.model.state_dict(), resumed.model.state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)
    # A checkpoint carries its catalogue: it decodes with no datamodule.
    model = GenerativeRecommender.load_from_checkpoint(ckpts[0], map_location="cpu")
    assert torch.equal(model.item_codes, full.datamodule.catalogue.item_codes)


@pytest.mark.slow  # a subprocess pair starting Lightning: ~13 s; the sharding itself is tested in-process below
def test_ddp_two_cpu_processes(tmp_path):
    dataset, tokenizer = synthetic(tmp_path, users=40)
    args = cli_args(dataset, tokenizer, tmp_path / "ddp", "--trainer.max_epochs=2", "--test_after_fit=true",
                    "--examples=0")
    args = [a for a in args if not a.startswith("--trainer.devices")]
    cmd = [sys.executable, str(ROOT / "train.py"), "fit", *args, "--trainer.strategy=ddp", "--trainer.devices=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two processes on two cores: one thread each
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads([line for line in result.stdout.splitlines() if line.startswith('{"test/')][0])
    assert metrics["test/invalid"] == 0.0
    # Every one of the 40 test users is counted once: recall@20 is an exact multiple of 1/40.
    assert abs(metrics["test/recall@20"] * 40 - round(metrics["test/recall@20"] * 40)) < 1e-4


@pytest.mark.parametrize("n", [7, 40])
def test_batch_shards_split_evaluation_rows_exactly_once_and_training_evenly(n):
    """The in-process twin of the DDP test: what two ranks would each load."""
    evaluation, training = [], []
    for rank in (0, 1):
        shards = BatchShards(n, batch_size=3, shuffle=False)
        shards.num_replicas, shards.rank = 2, rank
        evaluation.append([row for batch in shards for row in batch])
        assert len(list(shards)) == len(shards)
        shards = BatchShards(n, batch_size=3, shuffle=True)
        shards.num_replicas, shards.rank = 2, rank
        shards.set_epoch(1)
        training.append([row for batch in shards for row in batch])
        assert len(list(shards)) == len(shards)
    assert sorted(evaluation[0] + evaluation[1]) == list(range(n))  # every user counted once
    assert len(training[0]) == len(training[1]) == n // 2 and not set(training[0]) & set(training[1])


# ------------------------------------------------------------------------------------------- GPU habits
class HostRead(AssertionError):
    """A tensor's value was read by the host (on a GPU: a synchronisation)."""


@contextlib.contextmanager
def no_host_reads():
    """Makes every way Python reads a tensor's values raise :class:`HostRead` (item, bool, int, tolist, ...)."""
    names = ("item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__", "__index__")
    saved = {name: getattr(torch.Tensor, name) for name in names}

    def refuse(name):
        def read(self, *args, **kwargs):
            raise HostRead(f"Tensor.{name} called in the training step")
        return read

    try:
        for name in names:
            setattr(torch.Tensor, name, refuse(name))
        yield
    finally:
        for name, method in saved.items():
            setattr(torch.Tensor, name, method)


def _tiny_model(dropout: float = 0.1, **kwargs) -> GenerativeRecommender:
    torch.manual_seed(0)
    arch = T5Architecture(d_model=24, encoder_layers=2, decoder_layers=2, num_heads=3, d_kv=8, d_ff=37, dropout=dropout)
    return GenerativeRecommender(level_sizes=(3, 3, 3, 1), arch=arch, **kwargs)


def _walk_batch(tmp_path, device="cpu") -> dict:
    dataset, tokenizer = synthetic(tmp_path)
    data = SemanticIdData(dataset=str(dataset), tokenizer=str(tokenizer), max_len=5, batch_size=32)
    data.setup("fit")
    return {k: v.to(device) for k, v in data.parts["train"][list(range(32))].items()}


def _training_step(model, batch, optimizer) -> torch.Tensor:
    loss = model._step_losses(batch)["loss"]
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def test_the_training_step_never_reads_a_tensor_on_the_host(tmp_path, monkeypatch):
    """Forward, backward, clipping and the fused AdamW step, with the real batch layout: no value is read back, so
    on a GPU nothing waits for the device. HF's T5 reads its padding mask once per stack to skip an all-ones mask;
    under torch.compile (the GPU config) it does not, which is what is patched here."""
    import transformers.masking_utils

    from genrec.training import adamw_warmup_cosine

    monkeypatch.setattr(transformers.masking_utils, "_ignore_bidirectional_mask_sdpa", lambda *a, **k: False,
                        raising=False)
    model = _tiny_model().train()
    batch = _walk_batch(tmp_path)
    optimizer = adamw_warmup_cosine(model, lr=1e-3, weight_decay=0.05, warmup_steps=2, total_steps=10,
                                    fused=True)["optimizer"]
    before = model.model.shared.weight.clone()
    with no_host_reads():
        for _ in range(2):
            _training_step(model, batch, optimizer)
    assert not torch.equal(before, model.model.shared.weight)
    with no_host_reads(), pytest.raises(HostRead):  # the detector itself works
        bool(model.model.shared.weight.sum() > 0)


def test_decoding_stays_float32_where_the_trainer_autocasts(trained_walk):
    model = GenerativeRecommender.load_from_checkpoint(trained_walk.checkpoint, weights_only=True).eval()
    data = SemanticIdData(dataset=str(trained_walk.dataset), tokenizer=str(trained_walk.tokenizer), max_len=5)
    data.setup("test")
    batch = data.parts["test"][list(range(16))]
    fp32 = model.recommend_batch(batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # what bf16-mixed wraps validation and test steps in
        under = model.recommend_batch(batch)
    assert torch.equal(under.items, fp32.items) and torch.equal(under.scores, fp32.scores)


@pytest.mark.slow  # compiling takes about half a minute on 2 cores
def test_the_compiled_training_step_equals_eager(tmp_path):
    batch = _walk_batch(tmp_path)
    losses, grads = {}, {}
    for compiled in (False, True):
        model = _tiny_model(dropout=0.0, compile=compiled).train()  # compiled dropout draws other masks
        loss = model._step_losses(batch)["loss"]
        loss.backward()
        losses[compiled] = loss.detach()
        grads[compiled] = [p.grad for p in model.parameters() if p.grad is not None]
    assert model._compiled_losses is not None
    torch.testing.assert_close(losses[True], losses[False], atol=1e-5, rtol=1e-5)
    for a, b in zip(grads[True], grads[False]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.gpu
def test_the_training_step_on_cuda_never_synchronises(tmp_path, monkeypatch):
    """The same step on a GPU under CUDA's synchronisation check, with the batch already on the device."""
    import transformers.masking_utils

    from genrec.training import adamw_warmup_cosine

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    monkeypatch.setattr(transformers.masking_utils, "_ignore_bidirectional_mask_sdpa", lambda *a, **k: False,
                        raising=False)
    model = _tiny_model().cuda().train()
    batch = _walk_batch(tmp_path, device="cuda")
    optimizer = adamw_warmup_cosine(model, lr=1e-3, weight_decay=0.05, warmup_steps=2, total_steps=10)["optimizer"]
    assert optimizer.defaults["fused"]  # chosen for CUDA parameters
    with torch.autocast("cuda", dtype=torch.bfloat16):  # as bf16-mixed runs it
        _training_step(model, batch, optimizer)  # first-call work (cuBLAS handles, allocations) outside the check
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(3):
                _training_step(model, batch, optimizer)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
