"""Tokenizers named from their settings: the artifact of a run that names a tokenizer config but no artifact.

A run on a new dataset sets ``data.tokenizer: null`` and ``data.tokenizer_config`` to a *recipe*: a tokenizer
config (method, feature sources, sizes) that leaves the dataset and the output folder to be filled in, e.g.
``configs/tokenizer/rqkmeans.yaml``. :func:`derive_tokenizer` fills in what the dataset decides where the recipe
and the run's :class:`TokenizerSettings` leave it unset, logging each choice:

- the sizes: codes per level and levels from the catalogue size (:mod:`genrec.tokenizer.sizes`);
- the feature sources: for a dataset without item text (an interactions table), text sources are dropped, with
  co-occurrence features in their place where nothing else is left;
- the text template of the text sources that set none (the settings' template, else the dataset's fields:
  :func:`genrec.data.text.choose_template`, which fails here, before anything is fitted, listing the fields);

and names the artifact ``tokenizers/<dataset>-<recipe>-<levels>x<codes>-<hash>``, the hash covering the dataset
(its path and the bytes of its files) and every setting of the filled-in config but where it writes, so two
datasets, or two settings, never share an artifact and an unchanged run finds its artifact again.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import inspect
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from genrec.data.dataset import SequenceDataset, dataset_fingerprint, dataset_name, load_dataset
from genrec.data.text import choose_template, has_item_text
from genrec.tokenizer.sizes import fill_sizes

log = logging.getLogger(__name__)

TOKENIZERS_DIR = "tokenizers"
COOCCURRENCE = "genrec.features.cooccurrence.CooccurrenceFeatures"
# Trainer settings that change what is fitted (the rest, e.g. logging and progress bars, only how it is shown).
FITTING_TRAINER_KEYS = ("max_epochs", "max_steps", "precision", "gradient_clip_val")


class RecipeError(ValueError):
    """A run's tokenizer cannot be named: no dataset, no tokenizer config, or settings that do not fit it."""


NO_DATASET = "no dataset: name one with --data.dataset (a bundled name or a path)"


@dataclass
class TokenizerSettings:
    """A run's settings of a tokenizer named from its settings (``tokenizer: null``), over its config's.

    None keeps the config's value, or, where the config leaves it unset too, derives it from the dataset. An
    explicit value always wins, and is part of the artifact's name.
    """

    levels: int | None = None
    """ID length: code levels of a residual tokenizer, digits of product k-means."""
    codebook_size: int | None = None
    """Codes per level (per digit)."""
    template: str | None = None
    """Item text template of the config's text sources that set none, e.g. ``"{movie_title}. {class}"``."""


class DerivedTokenizer(NamedTuple):
    """A tokenizer named from its settings: where it is, and the ``train.py fit`` arguments that make it."""

    path: str
    fit_args: tuple[str, ...]


def _class_parameters(class_path: str, config: str) -> dict[str, inspect.Parameter]:
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise RecipeError(f"tokenizer config {config}: model class_path {class_path!r} cannot be imported") from None
    return dict(inspect.signature(cls).parameters)


def _init_args(node: dict) -> dict:
    """A config node's ``init_args``, created when absent or null."""
    node["init_args"] = node.get("init_args") or {}
    return node["init_args"]


def _is_text(source: dict) -> bool:
    return str(source.get("class_path", "")).endswith("TextEmbeddings")


def _adapt_sources(sources: list[dict], *, text: bool, template: str | None, n_items: int) -> list[dict]:
    """The recipe's feature sources for this dataset (module docstring), nested ones (a graph's) included; the
    run's ``template``, when set, replaces the text sources' own."""
    out = []
    for source in copy.deepcopy(sources):
        args = _init_args(source)
        if _is_text(source):
            if not text:
                continue
            if template is not None:
                args["template"] = template
        if args.get("sources"):
            args["sources"] = _adapt_sources(args["sources"], text=text, template=template, n_items=n_items)
        out.append(source)
    if not out:
        # Sports' recipe (configs/tokenizer/sports-cooc-rqkmeans.yaml): collaborative features need no text.
        out = [{"class_path": COOCCURRENCE, "init_args": {"dim": min(64, n_items - 1)}}]
    return out


def _text_sources(sources: list[dict]) -> list[dict]:
    """The text sources among ``sources``, nested ones included."""
    found = []
    for source in sources:
        found += [source] if _is_text(source) else _text_sources((source.get("init_args") or {}).get("sources") or [])
    return found


def _argument(key: str, value: Any) -> str:
    return f"--{key}={value if isinstance(value, str) else json.dumps(value)}"


def _feature_sources(ds: SequenceDataset, given: list[dict], settings: TokenizerSettings, config: str) -> list[dict]:
    """The recipe's feature sources for this dataset's text (module docstring); fails before anything is fitted
    when the item text cannot be made."""
    uses_text, text = bool(_text_sources(given)), has_item_text(ds)
    if settings.template is not None and not uses_text:
        raise RecipeError(f"tokenizer config {config} has no text source for the template {settings.template!r}")
    if settings.template is not None and not text:
        choose_template(ds, settings.template)  # raises: a template, but no item text
    sources = _adapt_sources(given, text=text, template=settings.template, n_items=ds.n_items)
    for source in _text_sources(sources):
        choose_template(ds, source["init_args"].get("template"))  # raises listing the item fields
    if uses_text and not text:
        log.warning("%s has no item text (no item file, or one without text fields): the tokenizer of %s uses %s "
                    "instead of its text features (set data.tokenizer_config to choose)", ds.name, config,
                    ", ".join(s["class_path"].rpartition(".")[2] for s in sources))
    return sources


def _sizes(n_items: int, model: dict, settings: TokenizerSettings, *, config: str, who: str) -> dict[str, int]:
    """The model's ID length and codes per level, set or derived from the catalogue (logged): its init args."""
    init = _init_args(model)
    parameters = _class_parameters(str(model.get("class_path")), config)
    length = next((key for key in ("levels", "digits") if key in parameters), None)
    for key, value in ((length or "levels", settings.levels), ("codebook_size", settings.codebook_size)):
        if value is not None:
            if key not in parameters:
                raise RecipeError(f"tokenizer config {config}: {model['class_path']} has no {key} to set")
            init[key] = value
    if length is None or "codebook_size" not in parameters:
        return {}  # sized otherwise (ColaRec's branching)
    # Product k-means's digits are the recipe's (or its class's default): the ID length is the model's choice.
    given = init.get(length, parameters[length].default if length == "digits" else None)
    sizes = fill_sizes(n_items, levels=given, codebook_size=init.get("codebook_size"), length=length, who=who,
                       option="--data.tokenizer_settings.{}")
    return {length: sizes.levels, "codebook_size": sizes.codebook_size}


def derive_tokenizer(
    dataset: str | None, config: str | Path, settings: TokenizerSettings | None = None, *, root: str = TOKENIZERS_DIR
) -> DerivedTokenizer:
    """Names the tokenizer that ``config`` (a recipe) makes for ``dataset``, and says how to fit it.

    Args:
        dataset: bundled name or path.
        config: a tokenizer config; its dataset and output folder are replaced.
        settings: the run's settings over the config's (:class:`TokenizerSettings`).
        root: the folder of the artifacts.

    Returns:
        The artifact's path and the ``train.py fit`` arguments that write it there.

    Raises:
        RecipeError: no dataset, no such config, a config without a model or data section, or settings the
            config's tokenizer has no place for.
        ItemTextError: the config embeds item text that cannot be made (:mod:`genrec.data.text`).
        FileNotFoundError: the dataset does not exist.
    """
    if dataset is None:
        raise RecipeError(NO_DATASET)
    settings = settings or TokenizerSettings()
    path = Path(config)
    if not path.is_file():
        raise RecipeError(f"tokenizer config {config} does not exist")
    spec = yaml.safe_load(path.read_text()) or {}
    if not isinstance(spec.get("model"), dict) or not isinstance(spec.get("data"), dict):
        raise RecipeError(f"tokenizer config {config}: expected a model and a data section (see configs/tokenizer/)")
    ds = load_dataset(dataset)
    model, data = spec["model"], spec["data"]
    data_init = _init_args(data)
    # Without sources, ItemFeatures embeds the items' text.
    given = data_init.get("sources") or [{"class_path": "genrec.features.source.TextEmbeddings"}]
    data_init["sources"] = _feature_sources(ds, given, settings, str(config))
    sizes = _sizes(ds.n_items, model, settings, config=str(config), who=f"{dataset_name(dataset)} ({path.stem})")
    init = _init_args(model)
    init.update(sizes)

    trainer = spec.get("trainer") or {}
    what = {  # everything that decides the codes; not where they are written
        "dataset": dataset_fingerprint(dataset),
        "model": {"class_path": model.get("class_path"),
                  "init_args": {k: v for k, v in init.items() if k != "output_dir"}},
        "data": {"class_path": data.get("class_path"),
                 "init_args": {k: v for k, v in data_init.items() if k != "dataset"}},
        "seed_everything": spec.get("seed_everything"),
        "trainer": {k: trainer[k] for k in FITTING_TRAINER_KEYS if k in trainer},
    }
    digest = hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:10]
    size = "-{}x{}".format(*sizes.values()) if sizes else ""
    name = f"{dataset_name(dataset)}-{path.stem}{size}-{digest}"
    artifact = f"{root}/{name}"
    overrides: dict[str, Any] = {"data.init_args.dataset": str(dataset)}
    overrides.update({f"model.init_args.{key}": value for key, value in sizes.items()})
    if data_init["sources"] != given:
        overrides["data.init_args.sources"] = data_init["sources"]
    overrides.update({"model.init_args.output_dir": artifact, "trainer.default_root_dir": f"runs/tokenizer/{name}"})
    return DerivedTokenizer(artifact, ("--config", str(config), *(_argument(k, v) for k, v in overrides.items())))


def run_tokenizer(
    dataset: str | None, tokenizer: str | None, config: str | None, settings: TokenizerSettings | dict | None = None
) -> DerivedTokenizer:
    """The tokenizer artifact of a run's datamodule and the ``train.py fit`` arguments that make it: as named
    (``--config config``; none without a config), or named from ``dataset`` and ``config``'s settings when
    ``tokenizer`` is None (:func:`derive_tokenizer`; ``settings`` apply only then).

    Raises:
        RecipeError: neither a tokenizer nor a config to name one, or no dataset to name it for.
    """
    if tokenizer is not None:
        return DerivedTokenizer(str(tokenizer), ("--config", str(config)) if config is not None else ())
    if dataset is None:
        raise RecipeError(NO_DATASET)
    if config is None:
        raise RecipeError("no tokenizer: name an artifact (data.tokenizer) or a tokenizer config that fits one "
                          "(data.tokenizer_config, e.g. configs/tokenizer/rqkmeans.yaml)")
    if isinstance(settings, dict):  # as a checkpoint's hyperparameters hold them
        settings = TokenizerSettings(**settings)
    return derive_tokenizer(dataset, config, settings)
