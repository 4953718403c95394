"""SASRec: causality, training rows equal to the split's windows, every loss trains, the real CLI learns a known rule,
and the exported item embeddings line up with dense item indices."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from genrec.baselines.__main__ import main as export_main
from genrec.baselines.data import ItemSequenceData
from genrec.data.loading import training_rows
from genrec.baselines.sasrec import SASRec, SASRecArchitecture, SASRecRecommender
from genrec.cli import main
from genrec.data import leave_one_out, load_dataset
from tests.conftest import write_sequences_dataset

ROOT = Path(__file__).resolve().parents[1]
N_ITEMS = 27


def walk(tmp_path: Path, *, users: int = 108, length: int = 8) -> Path:
    """Users walk the catalogue in steps of +1 (mod 27) from different starts: the next item is the last one + 1."""
    lines = [f"{u + 1} " + " ".join(str((u + t) % N_ITEMS + 1) for t in range(length)) for u in range(users)]
    return write_sequences_dataset(tmp_path / "walk", lines)


def test_causal_and_padding_invariant():
    torch.manual_seed(0)
    # Odd sizes catch shape mix-ups (d 12 over 3 heads of 4).
    model = SASRec(n_items=11, max_len=7, d_model=12, n_blocks=2, n_heads=3, dropout=0.1).eval()
    items = torch.tensor([[-1, -1, 3, 5, 0, 10, 2], [4, 4, 1, 9, 8, 7, 6]])
    base = model(items)
    for t in (2, 4, 6):
        changed = items.clone()
        changed[:, t] = (changed[:, t] + 1) % 11
        out = model(changed)
        torch.testing.assert_close(out[:, :t], base[:, :t])  # earlier positions never see a later item
        assert not torch.allclose(out[:, t], base[:, t])  # the test can fail: position t does depend on its item
    # Left padding is invisible: the same items without the padding columns give the same states.
    torch.testing.assert_close(model(items[:1, 2:]), base[:1, 2:])
    assert torch.isfinite(model(torch.full((2, 7), -1))).all()  # an all-padding row stays finite
    with pytest.raises(ValueError, match="longer than max_len"):
        model(torch.zeros(1, 8, dtype=torch.long))


def test_training_rows_are_the_split_windows(tiny_dataset):
    dataset = load_dataset(str(tiny_dataset))
    split = leave_one_out(dataset, max_len=10)
    windows = {(int(u), tuple(int(i) for i in h if i >= 0), int(t))
               for u, h, t in zip(split.train.users, split.train.history, split.train.target)}
    rows = training_rows(dataset.sequences, max_len=10)
    pairs = set()
    for u, inp, lab in zip(rows["users"], rows["input"], rows["labels"]):
        for t in torch.nonzero(lab >= 0).flatten().tolist():
            pairs.add((int(u), tuple(int(i) for i in inp[: t + 1] if i >= 0), int(lab[t])))
    assert pairs == windows and len(windows) == len(split.train)
    # Shorter rows keep each user's most recent max_len + 1 training items.
    short = training_rows(dataset.sequences, max_len=2)
    assert short["labels"][-1].tolist() == [dataset.sequences[2][-4], dataset.sequences[2][-3]]


@pytest.mark.parametrize("loss", ["ce", "sampled", "bce"])
def test_each_loss_trains(loss, tmp_path):
    torch.manual_seed(0)
    data = ItemSequenceData(dataset=str(walk(tmp_path)), max_len=5, batch_size=108)
    data.setup("fit")
    batch = data.parts["train"][list(range(108))]
    model = SASRecRecommender(n_items=N_ITEMS, max_len=5, arch=SASRecArchitecture(d_model=16, dropout=0.0),
                              loss=loss, negatives=8)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    losses = []
    for _ in range(30):
        value = model(batch["input"], batch["labels"])
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        losses.append(value.item())
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5]), losses


def test_learns_deterministic_rule_and_exports_aligned_embeddings(tmp_path):
    out = tmp_path / "run"
    cli = main([
        "fit", "--model=genrec.baselines.sasrec.SASRecRecommender", "--model.arch.d_model=32",
        "--model.arch.dropout=0.0", "--model.lr=0.01", "--model.warmup_steps=5",
        "--data=genrec.baselines.data.ItemSequenceData", f"--data.dataset={walk(tmp_path)}", "--data.max_len=5",
        "--data.batch_size=27", "--data.eval_batch_size=64",
        "--trainer.logger=false", "--trainer.accelerator=cpu", "--trainer.devices=1",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", "--trainer.max_epochs=12",
        "--trainer.check_val_every_n_epoch=12", f"--trainer.default_root_dir={out}", "--seed_everything=0",
        "--test_after_fit=true",
    ])
    metrics = cli.trainer.callback_metrics
    assert cli.model.hparams.n_items == N_ITEMS and cli.model.hparams.max_len == 5  # linked from the data
    assert metrics["test/recall@1"] >= 0.9
    assert metrics["test/invalid"] == 0 and metrics["test/repeated"] == 0

    # on_fit_end wrote the best checkpoint's table; the export CLI writes the same from the checkpoint.
    exported = np.load(out / "item_embeddings.npy")
    best = cli.trainer.checkpoint_callback.best_model_path
    export_main([best, str(tmp_path / "again.npy")])
    np.testing.assert_array_equal(np.load(tmp_path / "again.npy"), exported)
    model = SASRecRecommender.load_from_checkpoint(best, map_location="cpu").eval()
    assert exported.shape == (N_ITEMS, 32) and exported.dtype == np.float32
    # Row i is dense item i: as input (a one-item history embeds row i) and as output (ranking by h @ rows).
    for i in (0, 13, N_ITEMS - 1):
        np.testing.assert_array_equal(model.model.item_embedding(torch.tensor([i + 1]))[0].detach().numpy(), exported[i])
    history = cli.datamodule.parts["test"][list(range(20))]["history"]
    with torch.no_grad():
        scores = model.model(history)[:, -1] @ torch.from_numpy(exported).T
    assert torch.equal(scores.topk(20).indices, model.recommend(history))
    # The learned rule, read through the export: item i's embedding is the best match for the state after i - 1.
    with torch.no_grad():
        nxt = (model.model(torch.arange(N_ITEMS).unsqueeze(1))[:, -1] @ torch.from_numpy(exported).T).argmax(1)
    assert (nxt == (torch.arange(N_ITEMS) + 1) % N_ITEMS).float().mean() >= 0.9


def _config(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize("tokenizer,sasrec", [("beauty-text-sasrec-rqkmeans", "beauty"), ("sports-sasrec-rqkmeans", "sports")])
def test_tokenizer_reads_the_embeddings_sasrec_writes(tokenizer, sasrec):
    sources = _config(ROOT / f"configs/tokenizer/{tokenizer}.yaml")["data"]["init_args"]["sources"]
    paths = [s["init_args"]["path"] for s in sources if s["class_path"].endswith("NpyFeatures")]
    sasrec_config = _config(ROOT / f"configs/sasrec/{sasrec}.yaml")
    assert paths == [f"{sasrec_config['trainer']['default_root_dir']}/item_embeddings.npy"]
    tokenizer_data = _config(ROOT / f"configs/tokenizer/{tokenizer}.yaml")["data"]["init_args"]["dataset"]
    assert tokenizer_data == sasrec_config["data"]["init_args"]["dataset"]
