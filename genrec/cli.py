"""The Lightning CLI behind ``train.py``."""

from __future__ import annotations

from lightning.pytorch.cli import LightningCLI


def main(args: list[str] | None = None, *, run: bool = True) -> LightningCLI:
    """Runs ``fit|validate|test|predict`` from a YAML config (or builds the objects only, with ``run=False``)."""
    return LightningCLI(
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )
