"""Semantic-ID sizes that fit a catalogue: codes per level and number of levels, from the number of items.

TIGER's 3 levels x 256 codes were chosen for Amazon Beauty's 12,101 items: about 47 items per first-level code.
Kept for a catalogue a tenth of that size, most of the vocabulary is never used (MovieLens-100K's 1,682 items:
the third level's perplexity is 3.7 of 256). So, where a tokenizer config leaves them unset:

- ``codebook_size``: the power of two nearest n / 48 (about 48 items per first-level code, TIGER's ratio), within
  [16, 256] and at most n: 256 for Beauty and Sports, 32 for MovieLens-100K, 64 for MovieLens-1M;
- ``levels``: the fewest, at least TIGER's 3, with k^levels >= 16 n (a random ID would collide with another
  item's about once in 16), for the codebook size derived or set: 3 up to about a million items at 256 codes.

An explicit setting always wins; whatever is derived is logged with the rule.
"""

from __future__ import annotations

import logging
import math
from typing import NamedTuple

log = logging.getLogger(__name__)

ITEMS_PER_CODE = 48
MIN_CODES, MAX_CODES = 16, 256
MIN_LEVELS = 3
ID_SPACE_PER_ITEM = 16


class CatalogueSizes(NamedTuple):
    levels: int
    codebook_size: int


def catalogue_sizes(n_items: int, codebook_size: int | None = None) -> CatalogueSizes:
    """The semantic-ID sizes for a catalogue of ``n_items`` (module docstring); the levels for a given
    ``codebook_size`` when it is set."""
    if n_items < 2:
        raise ValueError(f"a catalogue needs at least 2 items to be tokenized, got {n_items}")
    k = codebook_size
    if k is None:
        k = 2 ** round(math.log2(max(n_items / ITEMS_PER_CODE, 1)))
        k = min(max(k, MIN_CODES), MAX_CODES, 2 ** int(math.log2(n_items)))
    if k < 2:
        raise ValueError(f"codebook_size must be >= 2, got {k}")
    levels = MIN_LEVELS
    while k**levels < ID_SPACE_PER_ITEM * n_items:
        levels += 1
    return CatalogueSizes(levels, k)


def fill_sizes(n_items: int, *, levels: int | None, codebook_size: int | None, who: str, length: str = "levels",
               option: str = "model.init_args.{}") -> CatalogueSizes:
    """``levels`` and ``codebook_size`` with the unset ones derived from the catalogue, saying so in the log.

    Args:
        n_items: catalogue size.
        levels: the ID length setting (None: derive); product k-means passes its digits, always set.
        codebook_size: the setting (None: derive).
        who: what the sizes are for, in the log line (e.g. ``"RQ-KMeans"`` or an artifact name).
        length: what the ID length is called in the log (``"levels"``, ``"digits"``).
        option: where a setting goes, in the log line's hint (``{}``: its name).
    """
    derived = catalogue_sizes(n_items, codebook_size)
    out = CatalogueSizes(derived.levels if levels is None else levels, derived.codebook_size)
    unset = [name for name, value in ((length, levels), ("codebook_size", codebook_size)) if value is None]
    if unset:
        rules = {
            length: f"{length} the fewest, at least {MIN_LEVELS}, with {ID_SPACE_PER_ITEM}x as many IDs as items",
            "codebook_size": f"codebook_size about {ITEMS_PER_CODE} items per first-level code, a power of two in "
                             f"[{MIN_CODES}, {MAX_CODES}]",
        }
        log.info("%s: %d %s x %d codes for %s items, from the catalogue size (%s; TIGER's 3 x 256 is for ~12k "
                 "items); set %s to choose", who, out.levels, length, out.codebook_size, f"{n_items:,}",
                 "; ".join(rules[name] for name in unset), " / ".join(option.format(name) for name in unset))
    return out
