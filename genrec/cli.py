"""The Lightning CLI behind ``train.py``.

Beyond Lightning's own CLI it links the model's vocabulary to the datamodule's tokenizer artifact (derived, never
typed twice), and ``--test_after_fit true`` tests the best checkpoint when ``fit`` ends and prints example
recommendations: one command trains, tests and shows what the model does.
"""

from __future__ import annotations

import importlib
import json
import logging
import sys
import time
import warnings

from lightning.pytorch.cli import LightningCLI

from genrec.pipeline import fit_missing

log = logging.getLogger(__name__)


class GenRecCLI(LightningCLI):
    _fit_seconds: float | None = None  # wall time of `fit`, for the run record (None for a test-only run)

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--test_after_fit", type=bool, default=False, help="test the best checkpoint after fit")
        parser.add_argument("--examples", type=int, default=3, help="example recommendations printed after testing")
        # Skipped by jsonargparse for models and datamodules without these (e.g. the item tokenizers).
        parser.link_arguments("data.level_sizes", "model.init_args.level_sizes", apply_on="instantiate")
        parser.link_arguments("data.n_user_buckets", "model.init_args.n_user_buckets", apply_on="instantiate")
        parser.link_arguments("data.n_items", "model.init_args.n_items", apply_on="instantiate")
        parser.link_arguments("data.max_len", "model.init_args.max_len", apply_on="instantiate")
        parser.link_arguments("data.input_level_sizes", "model.init_args.input_level_sizes", apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        self._require_training_length()
        # The pipeline step (genrec.pipeline): fit the artifacts this run needs and lacks, each by its own run.
        fitted = fit_missing(self._get(self.config, "data"), run=lambda args: main(["fit", *args]))
        if fitted:
            # Those runs drew from the global generators: seed again, so that the model starts from the same
            # weights whether its tokenizer was fitted just now or found on disk.
            self._set_seed()

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        _drop_wandb_anonymous(self.trainer)

    def _require_training_length(self) -> None:
        """Refuses to ``fit`` a recommender whose config sets no training length.

        Experiment configs leave the schedule to their base (``configs/base/``): given alone, Lightning would fall
        back to 1000 epochs with only a warning. A run with max_time or fast_dev_run has a length too (Lightning
        does not default it then); item tokenizer fits are not checked.

        Raises:
            ValueError: ``fit`` of a recommender with trainer.max_epochs null and trainer.max_steps -1.
        """
        if self.subcommand != "fit":
            return
        trainer = self._get(self.config, "trainer")
        if (trainer.max_epochs is not None or trainer.max_steps != -1 or trainer.max_time is not None
                or trainer.fast_dev_run):
            return
        module, _, name = str(self._get(self.config, "model").class_path).rpartition(".")
        if not hasattr(getattr(importlib.import_module(module), name, None), "recommend"):
            return  # not a recommender (an item tokenizer fit)
        given = " ".join(f"--config {path}" for path in self._option("config") or []) or "--config <experiment>"
        raise ValueError(
            "fit: no training length (trainer.max_epochs is null and trainer.max_steps -1, so Lightning would train "
            "for 1000 epochs); pass the base config first: "
            f"`python train.py fit --config configs/base/cpu.yaml {given}` "
            "(the Command line in the experiment's header names its base), or set --trainer.max_epochs"
        )

    def _option(self, name: str):
        return self.config[self.subcommand].get(name) if self.subcommand else None

    def before_fit(self) -> None:
        self._fit_start = time.perf_counter()

    def after_fit(self) -> None:
        self._fit_seconds = time.perf_counter() - self._fit_start
        if not self._option("test_after_fit"):
            return
        callback = self.trainer.checkpoint_callback
        best = getattr(callback, "best_model_path", "") or None
        # weights_only: the checkpoint is read as tensors and plain data (genrec checkpoints hold nothing else).
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best, weights_only=True)
        self._report()

    def after_test(self) -> None:
        self._report()

    def _report(self) -> None:
        if not self.trainer.is_global_zero:
            return
        metrics = {k: round(float(v), 5) for k, v in self.trainer.callback_metrics.items() if k.startswith("test/")}
        if metrics:
            print(json.dumps(metrics))
            from genrec.report import write_record

            config = ", ".join(str(path) for path in self._option("config") or []) or None
            write_record(trainer=self.trainer, model=self.model, datamodule=self.datamodule,
                         train_seconds=self._fit_seconds, config=config)
        count = self._option("examples") or 0
        if count and hasattr(self.model, "recommend_batch"):  # the generative models
            from genrec.seq2seq.examples import print_examples

            print_examples(self.model, self.datamodule, count=count)


class _DropNotices(logging.Filter):
    """Drops third-party notices a genrec user cannot act on: Lightning's advertisement for its cloud logger."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


def _drop_wandb_anonymous(trainer) -> None:
    """Lightning's WandbLogger passes ``anonymous`` to ``wandb.init`` even when unset, and wandb (0.31 here) then
    warns on every run that the setting has no effect; an unset one is left out (a set one is passed on, and warned
    of)."""
    from lightning.pytorch.loggers import WandbLogger

    for logger in trainer.loggers:
        init = getattr(logger, "_wandb_init", {})  # private to Lightning: tolerate its absence
        if isinstance(logger, WandbLogger) and "anonymous" in init and init["anonymous"] is None:
            del init["anonymous"]


def quiet_third_party() -> None:
    """Filters the third-party notices and warnings that say nothing to a genrec user (train.py, recommend.py)."""
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropNotices) for f in logger.filters):
        logger.addFilter(_DropNotices())
    # Lightning 2.6 on torch 2.13 warns about its own use of a torch pytree API at every step it flattens.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")


def main(args: list[str] | None = None, *, run: bool = True) -> LightningCLI:
    """Runs ``fit|validate|test|predict`` from a YAML config (or builds the objects only, with ``run=False``)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    quiet_third_party()
    return GenRecCLI(
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )


def input_error(error: BaseException) -> BaseException | None:
    """The bad-input error (a data file, its item text, a tokenizer artifact or what names one) behind ``error``:
    jsonargparse wraps an error raised while it builds the datamodule in its own, so the chain of causes is
    searched."""
    from genrec.data import DataFormatError
    from genrec.data.text import ItemTextError
    from genrec.tokenizer.artifact import ArtifactError
    from genrec.tokenizer.recipe import RecipeError

    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, (DataFormatError, ItemTextError, ArtifactError, RecipeError)):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def entry(args: list[str] | None = None) -> int:
    """``train.py``: :func:`main`, with bad input reported as one line naming the file and line (exit 2) instead of
    a chained traceback; any other error propagates as it is."""
    try:
        main(args)
    except Exception as error:  # noqa: BLE001 -- re-raised unless it is bad input
        cause = input_error(error)
        if cause is None:
            raise
        print(f"train.py: error: {cause}", file=sys.stderr)
        return 2
    return 0

