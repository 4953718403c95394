"""The one-command pipeline: what ``train.py`` builds before the objects of a run exist.

A run's config may name artifacts that other runs produce: the tokenizer artifact the model generates
(``data.tokenizer``, fitted by ``data.tokenizer_config``), those of its input modalities
(``data.input_modalities[i].tokenizer`` / ``.tokenizer_config``), and feature files with the run that writes
them (a ``genrec.features.NpyFeatures`` source with ``made_by``, e.g. SASRec's item embeddings, in
``data.sources`` of a tokenizer or ``data.content_sources``). Before the Trainer, model and datamodule are built,
every missing one is made by its own run, exactly as ``python train.py fit --config <tokenizer_config>`` (or
``python train.py fit <made_by...>``) would; that run in turn makes what its own config needs, so one command
can chain SASRec -> tokenizer -> generative model. This is the only place where one run starts another: library
objects (DataModules, models) never train anything, and a DataModule given a missing artifact raises.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

log = logging.getLogger(__name__)


class Artifact(NamedTuple):
    """An artifact a run needs, and the run that writes it: a tokenizer config, or ``train.py fit`` arguments."""

    path: str
    config: str | None
    """The config that fits it (tokenizers; None: none given)."""
    made_by: tuple[str, ...] = ()
    """``train.py fit`` arguments of the run that writes it, when that is not one config file (a feature file)."""

    def fit_args(self) -> list[str]:
        """The ``train.py fit`` arguments that make this artifact ([]: nothing can)."""
        if self.made_by:
            return list(self.made_by)
        return ["--config", self.config] if self.config is not None else []


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
    for source in [*(_get(args, "sources") or ()), *(_get(args, "content_sources") or ())]:
        source_args = _get(source, "init_args") or source
        made_by = _get(source_args, "made_by")
        if made_by:
            made_by = tuple(str(a) for a in made_by)
            needed.append(Artifact(str(_get(source_args, "path")), None, made_by))
    return needed


def _present(artifact: Artifact) -> bool:
    """Whether an artifact is there whole: a feature file exists; a tokenizer folder has its manifest (an empty or
    half-written folder, e.g. after a killed fit, counts as missing and is made again)."""
    if artifact.made_by:
        return Path(artifact.path).is_file()
    from genrec.tokenizer.artifact import is_complete

    return is_complete(artifact.path)


def fit_missing(data: Any, *, run: Callable[[str], object]) -> list[Artifact]:
    """Fits every missing artifact of a ``data`` config node with its own config.

    Args:
        data: the ``data`` node of a parsed LightningCLI config.
        run: runs one ``train.py fit`` to completion given its arguments (:meth:`Artifact.fit_args`), e.g.
            ``lambda args: main(["fit", *args])``.

    Returns:
        The artifacts that were fitted (empty when all existed whole).

    Raises:
        FileNotFoundError: an artifact is missing and has no config, or its config ran but did not write it.
    """
    fitted = []
    for artifact in required_artifacts(data):
        if _present(artifact):
            continue
        args = artifact.fit_args()
        if not args:
            raise FileNotFoundError(
                f"tokenizer artifact {artifact.path!r} does not exist and no tokenizer_config is given to fit it"
            )
        command = "train.py fit " + " ".join(args)
        log.info("%s is missing: making it with %s", artifact.path, command)
        run(args)
        if not _present(artifact):
            raise FileNotFoundError(f"{command} ran but did not write {artifact.path!r}: check where it writes")
        fitted.append(artifact)
    return fitted
