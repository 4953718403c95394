"""The one-command pipeline: what ``train.py`` builds before the objects of a run exist.

A run's config may name artifacts that other runs produce: the tokenizer artifact the model generates
(``data.tokenizer``, fitted by ``data.tokenizer_config``) and those of its input modalities
(``data.input_modalities[i].tokenizer`` / ``.tokenizer_config``). Before the Trainer, model and datamodule are
built, every missing one is fitted by its own config, in a run of its own, exactly as
``python train.py fit --config <tokenizer_config>`` would; the tokenizer run in turn fits what its own config
needs. This is the only place where one run starts another: library objects (DataModules, models) never train
anything, and a DataModule given a missing artifact raises.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

log = logging.getLogger(__name__)


class Artifact(NamedTuple):
    """An artifact a run needs, and the config of the run that writes it (None: nothing can)."""

    path: str
    config: str | None


def _get(node: Any, key: str) -> Any:
    """``node[key]`` for a parsed config node (jsonargparse Namespace, dict or dataclass); None when absent."""
    if node is None:
        return None
    if isinstance(node, Mapping):
        return node.get(key)
    if hasattr(node, "get"):  # jsonargparse Namespace
        return node.get(key)
    return getattr(node, key, None)


def required_artifacts(data: Any) -> list[Artifact]:
    """The artifacts named by a parsed ``data`` config node (``{class_path, init_args}``), in fitting order.

    Args:
        data: the ``data`` node of a parsed LightningCLI config; datamodules without tokenizers give ``[]``.
    """
    args = _get(data, "init_args") or data
    needed = []
    if _get(args, "tokenizer") is not None:
        needed.append(Artifact(str(_get(args, "tokenizer")), _get(args, "tokenizer_config")))
    for modality in _get(args, "input_modalities") or ():
        needed.append(Artifact(str(_get(modality, "tokenizer")), _get(modality, "tokenizer_config")))
    return needed


def fit_missing(data: Any, *, run: Callable[[str], object]) -> list[Artifact]:
    """Fits every missing artifact of a ``data`` config node with its own config.

    Args:
        data: the ``data`` node of a parsed LightningCLI config.
        run: runs one config to completion, e.g. ``lambda config: main(["fit", "--config", config])``.

    Returns:
        The artifacts that were fitted (empty when all existed).

    Raises:
        FileNotFoundError: an artifact is missing and has no config, or its config ran but did not write it.
    """
    fitted = []
    for artifact in required_artifacts(data):
        if Path(artifact.path).exists():
            continue
        if artifact.config is None:
            raise FileNotFoundError(
                f"tokenizer artifact {artifact.path!r} does not exist and no tokenizer_config is given to fit it"
            )
        log.info("tokenizer %s is missing: fitting it with %s", artifact.path, artifact.config)
        run(artifact.config)
        if not Path(artifact.path).exists():
            raise FileNotFoundError(f"{artifact.config} ran but did not write {artifact.path!r}: check its output_dir")
        fitted.append(artifact)
    return fitted
