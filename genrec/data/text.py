"""Item text: the fields of a dataset's item file, and the one line of text each item is embedded with.

A template (``str.format`` over the item's fields) renders each item's text. Left unset, it is the default
``"{title}. {categories}"`` when the item file has either field; otherwise the item file's own title-like and
category-like fields are found by name (RecBole's MovieLens has ``movie_title`` and ``class``) and the choice is
logged; when it has neither, :class:`ItemTextError` lists the fields it does have and the ``template`` line to set.
Text is never made empty without being asked for (``missing_text="empty"`` in ``genrec.features.text``).
"""

from __future__ import annotations

import html
import logging
import re
import string
from dataclasses import dataclass
from typing import NamedTuple

from genrec.data.dataset import SequenceDataset

log = logging.getLogger(__name__)

DEFAULT_TEMPLATE = "{title}. {categories}"
# Field names, compared lower-case with "_", "-" and " " removed: a title-like field contains "title" or ends in
# "name" (movie_title, product_name); a category-like one contains one of these (categories, genres, class, tags).
CATEGORY_WORDS = ("categor", "genre", "class", "tag", "keyword", "topic")


class ItemTextError(ValueError):
    """A dataset's items have no text a template can render (no item file, or no field to name)."""


def render(value: object) -> str:
    """A field value as text: category paths ``[[a, b], [c]]`` become ``a > b; c``; HTML entities unescaped."""
    if value is None:
        return ""
    if isinstance(value, list):
        if value and all(isinstance(v, list) for v in value):
            return "; ".join(" > ".join(render(x) for x in path) for path in value)
        return ", ".join(render(v) for v in value)
    return html.unescape(str(value)).strip()


def template_fields(template: str) -> list[str]:
    """The field names a template uses, in order."""
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


@dataclass(frozen=True)
class FieldSummary:
    """One field of the item file: how many items have it non-empty, and a few of its values."""

    name: str
    filled: int
    examples: tuple[str, ...]


def field_summaries(dataset: SequenceDataset, *, examples: int = 3) -> list[FieldSummary]:
    """The fields of the dataset's item records in first-seen order (empty when it has no item file)."""
    filled: dict[str, int] = {}
    seen: dict[str, list[str]] = {}
    for record in dataset.items or ():
        for name, value in record.items():
            text = render(value)
            filled.setdefault(name, 0)
            seen.setdefault(name, [])
            if text:
                filled[name] += 1
                if len(seen[name]) < examples:
                    seen[name].append(text)
    return [FieldSummary(name, filled[name], tuple(seen[name])) for name in filled]


def has_item_text(dataset: SequenceDataset) -> bool:
    """Whether any item has a non-empty field: False without an item file, or with one that holds no text."""
    return any(render(value) for record in dataset.items or () for value in record.values())


def _key(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "").replace(" ", "")


def _best(fields: list[FieldSummary], like) -> str | None:
    """The filled field whose name matches ``like`` that most items have (the first such on ties)."""
    matches = [f for f in fields if f.filled and like(_key(f.name))]
    return max(matches, key=lambda f: f.filled).name if matches else None


def title_field(dataset: SequenceDataset) -> str | None:
    """The field that names an item: ``title`` when items have one, else the title-like field most items have."""
    fields = field_summaries(dataset, examples=0)
    if any(f.name == "title" and f.filled for f in fields):
        return "title"
    return _best(fields, lambda k: "title" in k or k.endswith("name"))


def _listing(fields: list[FieldSummary]) -> str:
    if not fields:
        return "none"
    return ", ".join(f"{f.name} ({f.filled} items{', e.g. ' + repr(f.examples[0][:40]) if f.examples else ''})"
                     for f in fields)


def _no_text(dataset: SequenceDataset, fields: list[FieldSummary], what: str) -> ItemTextError:
    example = ". ".join("{" + name + "}" for name in ([f.name for f in fields if f.filled][:2] or ["your_field"]))
    return ItemTextError(
        f"dataset {dataset.name!r}: {what}; its item fields are: {_listing(fields)}. Name the fields to embed with "
        f"the text source's template: `template: \"{example}\"` under TextEmbeddings' init_args in the tokenizer "
        f"config, or --data.tokenizer_settings.template '{example}' on a run whose tokenizer is named from its settings"
    )


class TemplateChoice(NamedTuple):
    """The template items are rendered with, and how it was chosen (for logs and ``inspect``)."""

    template: str
    how: str


def choose_template(dataset: SequenceDataset, template: str | None = None) -> TemplateChoice:
    """The template the items' text is rendered with (see the module docstring) and how it was chosen.

    Args:
        dataset: a dataset with an item file.
        template: an explicit template, used as it is (it must name at least one field some item has); None to
            choose: the default when an item has ``title`` or ``categories``, else the title-like and
            category-like fields found.

    Raises:
        ItemTextError: the dataset has no item file, or nothing to render: neither default nor title- or
            category-like fields (unset template), or none of the template's fields (explicit template). The
            message lists the fields present and the ``template`` line to set.
    """
    if dataset.items is None:
        raise ItemTextError(f"dataset {dataset.name!r} has no item text (items.jsonl or a RecBole .item file)")
    fields = field_summaries(dataset)
    filled = {f.name for f in fields if f.filled}
    if template is not None:
        named = template_fields(template)
        if not named:
            raise ItemTextError(f"template {template!r} names no fields, e.g. '{{title}}'")
        if not filled & set(named):
            raise _no_text(dataset, fields, f"no item has any field of template {template!r}")
        return TemplateChoice(template, "as set")
    if filled & set(template_fields(DEFAULT_TEMPLATE)):
        return TemplateChoice(DEFAULT_TEMPLATE, "the default")
    title = title_field(dataset)
    category = _best(fields, lambda k: any(word in k for word in CATEGORY_WORDS))
    chosen = [name for name in (title, category) if name is not None]
    if not chosen:
        raise _no_text(dataset, fields, f"the default template {DEFAULT_TEMPLATE!r} finds no field, and no field "
                                        "looks like a title or a category")
    return TemplateChoice(
        ". ".join("{" + name + "}" for name in chosen),
        f"the item file has no title or categories field: title-like field {title}, category-like field {category}",
    )


def resolve_template(dataset: SequenceDataset, template: str | None = None) -> str:
    """:func:`choose_template`'s template, logging the fields it found when it had to look for them."""
    choice = choose_template(dataset, template)
    if choice.template not in (template, DEFAULT_TEMPLATE):
        log.info("%s: item text is %r (%s; set the text source's template to choose)", dataset.name, *choice)
    return choice.template


def item_texts(dataset: SequenceDataset, template: str | None = None) -> tuple[list[str], list[int]]:
    """Renders every item's text through ``template`` (None: :func:`resolve_template` chooses).

    Returns:
        the texts (one per dense item index) and the indices of items whose template fields are all empty.
    """
    template = resolve_template(dataset, template)
    fields = template_fields(template)
    texts, empty = [], []
    for index, record in enumerate(dataset.items):
        values = {name: render(record.get(name)) for name in fields}
        if not any(values.values()):
            empty.append(index)
        text = template.format_map(values)
        # Collapse separators left dangling by empty fields ("Title. " -> "Title").
        texts.append(re.sub(r"\s+", " ", text).strip(" .;,"))
    return texts, empty
