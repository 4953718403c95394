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

A run that names a tokenizer config but no artifact (``data.tokenizer: null``, e.g. ``configs/tiger/cpu.yaml`` with
``--data.dataset PATH``) gets the artifact named from the dataset and the config's settings
(:func:`genrec.tokenizer.recipe.derive_tokenizer`): it is written into the run's config here, before the objects
are built, so the DataModule, the saved config and the checkpoint all name it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any, NamedTuple

from genrec.tokenizer.recipe import RecipeError, TokenizerSettings, run_tokenizer

log = logging.getLogger(__name__)


class Artifact(NamedTuple):
    """An artifact a run needs, and the run that writes it: a tokenizer config, or ``train.py fit`` arguments."""

    path: str
    config: str | None
    """The config that fits it (tokenizers; None: none given)."""
    made_by: tuple[str, ...] = ()
    """``train.py fit`` arguments of the run that writes it, when that is not one config file (a feature file)."""
    derived: tuple[str, ...] = ()
    """For a tokenizer named from its settings: the ``train.py fit`` arguments that write it there."""

    def fit_args(self) -> list[str]:
        """The ``train.py fit`` arguments that make this artifact ([]: nothing can)."""
        if self.made_by or self.derived:
            return list(self.made_by or self.derived)
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


def _has(node: Any, key: str) -> bool:
    return key in node if isinstance(node, Mapping) or hasattr(node, "__contains__") else hasattr(node, key)


def _tokenizer(args: Any) -> Artifact | None:
    """The tokenizer artifact a datamodule's ``init_args`` name, or name from their settings (``tokenizer: null``)."""
    if not _has(args, "tokenizer"):
        return None  # a datamodule without a tokenizer (SASRec's, the tokenizers' own)
    tokenizer, config, given = (_get(args, key) for key in ("tokenizer", "tokenizer_config", "tokenizer_settings"))
    settings = None
    if given is not None and any(_get(given, f.name) is not None for f in fields(TokenizerSettings)):
        if tokenizer is not None:
            raise RecipeError(
                f"data.tokenizer_settings apply to a tokenizer named from them (data.tokenizer: null), but "
                f"data.tokenizer is {str(tokenizer)!r}: set one or the other"
            )
        settings = TokenizerSettings(**{f.name: _get(given, f.name) for f in fields(TokenizerSettings)})
    named = run_tokenizer(_get(args, "dataset"), tokenizer, config, settings)
    return Artifact(named.path, config, derived=named.fit_args if tokenizer is None else ())


def required_artifacts(data: Any) -> list[Artifact]:
    """The artifacts named by a parsed ``data`` config node (``{class_path, init_args}``), in fitting order.

    Args:
        data: the ``data`` node of a parsed LightningCLI config; datamodules without tokenizers give ``[]``. A
            tokenizer left unnamed is named from the dataset and its config's settings (``Artifact.derived``).
    """
    args = _get(data, "init_args") or data
    needed = []
    tokenizer = _tokenizer(args)
    if tokenizer is not None:
        needed.append(tokenizer)
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
        The artifacts that were fitted (empty when all existed whole). A tokenizer named from its settings
        (``tokenizer: null``) is named in ``data`` too, so the objects of the run are built with it.

    Raises:
        FileNotFoundError: an artifact is missing and has no config, or its config ran but did not write it.
    """
    fitted = []
    needed = required_artifacts(data)
    for artifact in needed:
        if artifact.derived:  # the tokenizer named from its settings: the run's objects are built with that name
            (_get(data, "init_args") or data)["tokenizer"] = artifact.path
            log.info("the run's tokenizer, named from its dataset and settings: %s", artifact.path)
    for artifact in needed:
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
