"""``last.ckpt`` is the last model: after the final step of every run, whole, and replaced (not versioned) on reruns;
and a run prints no third-party notice its user cannot act on."""

from __future__ import annotations

import json

import torch

from genrec.cli import main
from tests.conftest import cli_args, synthetic

CALLBACKS = json.dumps([
    {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
     "init_args": {"monitor": "val/ndcg@10", "mode": "max", "filename": "best-{epoch}"}},
    {"class_path": "genrec.training.LastCheckpoint"},
])


def test_last_ckpt_holds_the_final_step_even_when_validation_skips_the_last_epoch(tmp_path):
    dataset, tokenizer = synthetic(tmp_path, users=40)
    run = tmp_path / "run"
    args = ["fit", *cli_args(dataset, tokenizer, run, "--trainer.max_epochs=3", "--trainer.check_val_every_n_epoch=2",
                             "--trainer.limit_val_batches=1", f"--trainer.callbacks={CALLBACKS}")]
    for attempt in range(2):  # the second run writes into the same folder
        cli = main(args)
        steps = cli.trainer.global_step
        last = run / "checkpoints" / "last.ckpt"
        saved = torch.load(last, map_location="cpu", weights_only=True)
        # Validation ran at epoch 2 only (step 8 of 12): Lightning's save_last would have left step 8 here.
        assert saved["global_step"] == steps == 12 and saved["epoch"] == 2, attempt
        assert not list(run.rglob("last-v*.ckpt")) and not list(run.rglob(".*.partial")), attempt
    best = cli.trainer.checkpoint_callback.best_model_path
    assert torch.load(best, map_location="cpu", weights_only=True)["global_step"] == 8


def test_a_run_shows_no_notice_the_user_cannot_act_on(tmp_path, caplog, recwarn):
    import logging

    dataset, tokenizer = synthetic(tmp_path, users=40)
    with caplog.at_level(logging.INFO):
        main(["fit", *cli_args(dataset, tokenizer, tmp_path / "run", "--trainer.max_steps=2",
                               "--trainer.limit_val_batches=1", f"--trainer.callbacks={CALLBACKS}")])
    text = caplog.text + " ".join(str(w.message) for w in recwarn)
    assert "litlogger" not in text and "LeafSpec" not in text and "`weights_only` was not set" not in text
    assert "genrec" in caplog.text  # genrec's own messages still come through


def test_a_wandb_run_is_started_without_the_anonymous_warning(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "false")
    dataset, tokenizer = synthetic(tmp_path, users=40)
    logger = json.dumps({"class_path": "lightning.pytorch.loggers.WandbLogger",
                         "init_args": {"save_dir": str(tmp_path / "wandb"), "project": "genrec-test"}})
    cli = main([*cli_args(dataset, tokenizer, tmp_path / "run", "--trainer.max_steps=1"),
                f"--trainer.logger={logger}"], run=False)
    (wandb_logger,) = cli.trainer.loggers
    assert "anonymous" not in wandb_logger._wandb_init
    try:
        wandb_logger.experiment  # starts the (offline) wandb run, as fit does
    finally:
        wandb_logger.experiment.finish()
    out = capfd.readouterr()
    assert "offline" in out.out + out.err  # wandb spoke: the check below is not vacuous
    assert "anonymous" not in out.out + out.err
