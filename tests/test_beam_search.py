"""The generic beam-search engine against a toy step whose brute force is trivial.

The toy step's logits are a fixed table indexed by (user, level, codes so far), so the oracle just enumerates the
catalogue and sums each item's log-softmaxed logits. Odd level sizes (3, 5, 2, 4), token ranges with gaps between
them, and catalogues of some of the 120 paths in which the first code 1 starts no item.
"""

from __future__ import annotations

import math

import pytest
import torch
from einops import repeat

from genrec.decoding import BeamSearchOutput, PrefixIndex, beam_search

SIZES, OFFSETS, VOCAB, START = (3, 5, 2, 4), (3, 7, 13, 16), 22, 1  # gaps between the token ranges


class TableStep:
    """A :class:`genrec.decoding.DecoderStep` whose logits are ``tables[l][u, prefix]`` for user ``u`` at level ``l``.

    ``prefix`` numbers a beam's codes so far in mixed radix over ``sizes``. The step checks what it is fed (the
    start token, then codes in the previous level's token range) and records the beam width of every step.
    """

    def __init__(self, tables: list[torch.Tensor], sizes: tuple[int, ...], offsets: tuple[int, ...]) -> None:
        self.tables = tables  # per level (b, prod(sizes[:l]), v)
        self.sizes, self.offsets = sizes, offsets
        self.prefix: torch.Tensor | None = None  # (b, w) prefix id of the rows of the last step
        self.widths: list[int] = []

    def step(self, tokens: torch.Tensor, level: int) -> torch.Tensor:
        self.widths.append(tokens.shape[1])
        if level == 0:
            assert (tokens == START).all()
            self.prefix = torch.zeros_like(tokens)
        else:
            code = tokens - self.offsets[level - 1]
            assert ((code >= 0) & (code < self.sizes[level - 1])).all()
            self.prefix = self.prefix * self.sizes[level - 1] + code
        table = self.tables[level]  # (b, prefixes, v)
        return table.gather(1, repeat(self.prefix, "b w -> b w v", v=table.shape[-1]))

    def reorder(self, parent: torch.Tensor) -> None:
        self.prefix = self.prefix.gather(1, parent)


class CheckedIndex(PrefixIndex):
    """A prefix index that fails when asked about a node outside its documented range (parked beams included)."""

    def children(self, level: int, nodes: torch.Tensor) -> torch.Tensor:
        assert ((nodes >= 0) & (nodes < self.n_nodes[level])).all()
        return super().children(level, nodes)


def toy_tables(
    n_users: int, seed: int, *, sizes: tuple[int, ...] = SIZES, dtype: torch.dtype = torch.float64
) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    counts = [math.prod(sizes[:level]) for level in range(len(sizes))]
    return [(2 * torch.randn(n_users, c, VOCAB, generator=g, dtype=torch.float64)).to(dtype) for c in counts]


def toy_catalogue(n_items: int, seed: int) -> torch.Tensor:
    """(n_items, 4) distinct random paths, none starting with code 1 (a missing first-level prefix)."""
    paths = torch.cartesian_prod(*(torch.arange(s) for s in SIZES))
    paths = paths[paths[:, 0] != 1]
    return paths[torch.randperm(len(paths), generator=torch.Generator().manual_seed(seed))[:n_items]]


def toy_brute_force(
    tables: list[torch.Tensor], codes: torch.Tensor, normalize: str, *, sizes: tuple[int, ...] = SIZES
) -> torch.Tensor:
    """(b, m) every item's summed log-softmaxed logits along its path, by enumeration (no prefix index)."""
    rows = codes.tolist()
    allowed = {}  # prefix -> codes that extend it in the catalogue
    for row in rows:
        for level in range(len(row)):
            allowed.setdefault(tuple(row[:level]), set()).add(row[level])
    out = torch.zeros(tables[0].shape[0], len(rows), dtype=torch.promote_types(tables[0].dtype, torch.float32))
    for i, row in enumerate(rows):
        prefix = 0
        for level, code in enumerate(row):
            logits = tables[level][:, prefix].to(out.dtype)  # (b, v)
            if normalize == "vocab":
                out[:, i] += logits.log_softmax(-1)[:, OFFSETS[level] + code]
            else:
                valid = sorted(allowed[tuple(row[:level])])
                level_logits = logits[:, [OFFSETS[level] + c for c in valid]]
                out[:, i] += level_logits.log_softmax(-1)[:, valid.index(code)]
            prefix = prefix * sizes[level] + code
    return out


def toy_search(
    tables: list[torch.Tensor], codes: torch.Tensor, *, sizes: tuple[int, ...] = SIZES, layout=None, **kwargs
) -> tuple[BeamSearchOutput, TableStep]:
    """Runs the engine on a :class:`TableStep`; ``kwargs`` go to ``beam_search`` and may override its inputs."""
    step = TableStep(tables, sizes, OFFSETS[: len(sizes)])
    start = torch.full((tables[0].shape[0], 1), START)
    args = {"start_tokens": start, "level_sizes": sizes, "offsets": OFFSETS[: len(sizes)]} | kwargs
    return beam_search(step, CheckedIndex(codes, sizes, layout=layout), **args), step


@pytest.mark.parametrize("layout", ["dense", "csr"])
@pytest.mark.parametrize("normalize", ["vocab", "valid"])
def test_exhaustive_beam_equals_brute_force(normalize, layout):
    codes, tables = toy_catalogue(23, seed=0), toy_tables(5, seed=1)
    out, step = toy_search(tables, codes, beam_width=23, top_k=23, normalize=normalize, layout=layout)
    brute = toy_brute_force(tables, codes, normalize).sort(dim=1, descending=True)
    assert out.scores.dtype == torch.float64
    assert torch.equal(out.items, brute.indices)
    torch.testing.assert_close(out.scores, brute.values, atol=1e-12, rtol=0)
    assert torch.equal(out.codes, codes[out.items])
    # One row per user, then only as many beams as there are candidates (3 first codes, 3 x 5 prefixes).
    assert step.widths == [1, 3, 15, 23]
    # "valid" scores are a distribution over the catalogue; "vocab" ones leave mass on the other tokens.
    total = out.scores.exp().sum(1)
    if normalize == "valid":
        torch.testing.assert_close(total, torch.ones(5, dtype=torch.float64))
    else:
        assert (total < 0.9).all()


@pytest.mark.parametrize("normalize", ["vocab", "valid"])
def test_narrow_beam_finds_the_forced_answer(normalize):
    codes, tables = toy_catalogue(23, seed=2), toy_tables(6, seed=3)
    g = torch.Generator().manual_seed(4)
    chosen = torch.stack([torch.randperm(len(codes), generator=g)[:3] for _ in range(6)])  # (b, 3)
    # Every step of a chosen item far above the rest: set, not added, since chosen items may share a prefix, and
    # a different value per item so that their scores do not tie.
    for u, items in enumerate(chosen.tolist()):
        for j, path in enumerate(codes[items].tolist()):
            prefix = 0
            for level, code in enumerate(path):
                tables[level][u, prefix, OFFSETS[level] + code] = 40 + j
                prefix = prefix * SIZES[level] + code
    brute = toy_brute_force(tables, codes, normalize).topk(3, dim=1)
    assert torch.equal(brute.indices.sort(1).values, chosen.sort(1).values)  # the setup forces the answer
    out, _ = toy_search(tables, codes, beam_width=3, top_k=3, normalize=normalize)
    assert torch.equal(out.items, brute.indices)
    torch.testing.assert_close(out.scores, brute.values, atol=1e-12, rtol=0)


def test_missing_prefix_is_never_decoded():
    codes, tables = toy_catalogue(23, seed=0), toy_tables(5, seed=1)
    bumped = [t.clone() for t in tables]
    bumped[0][..., OFFSETS[0] + 1] += 50  # first code 1 starts no item
    out = {}
    for normalize in ("vocab", "valid"):
        for name, t in (("plain", tables), ("bumped", bumped)):
            out[name, normalize], _ = toy_search(t, codes, beam_width=8, top_k=5, normalize=normalize)
        got = out["bumped", normalize]
        assert got.items.shape == got.scores.shape == (5, 5) and got.codes.shape == (5, 5, 4)
        assert torch.equal(got.codes, codes[got.items]) and (got.codes[..., 0] != 1).all()
        torch.testing.assert_close(got.scores, toy_brute_force(bumped, codes, normalize).gather(1, got.items))
    # "valid" never looks at the invalid logit; "vocab" normalises over it, so every score drops.
    assert torch.equal(out["bumped", "valid"].items, out["plain", "valid"].items)
    assert torch.equal(out["bumped", "valid"].scores, out["plain", "valid"].scores)
    assert (out["bumped", "vocab"].scores < out["plain", "vocab"].scores - 10).all()


def test_fewer_items_than_top_k_fills_with_minus_one_and_bf16_scores_in_float32():
    codes, tables = toy_catalogue(2, seed=5), toy_tables(3, seed=6, dtype=torch.bfloat16)
    out, _ = toy_search(tables, codes, beam_width=6, top_k=5)
    assert out.scores.dtype == torch.float32
    assert (out.items[:, 2:] == -1).all() and (out.codes[:, 2:] == -1).all()
    assert torch.isinf(out.scores[:, 2:]).all() and (out.scores[:, 2:] < 0).all()
    brute = toy_brute_force(tables, codes, "vocab").sort(dim=1, descending=True)
    assert torch.equal(out.items[:, :2], brute.indices)
    torch.testing.assert_close(out.scores[:, :2], brute.values)


def test_fewer_candidates_than_top_k_pads_and_never_returns_a_parked_beam():
    # Level sizes (2, 1), one item [1, 0]: the -inf beam of code 0 is parked on the one depth-1 node, whose child
    # is the item again; and only 2 x 1 candidates exist on the last level for a top_k of 4.
    codes, tables = torch.tensor([[1, 0]]), toy_tables(2, seed=7, sizes=(2, 1))
    out, step = toy_search(tables, codes, sizes=(2, 1), beam_width=4, top_k=4)
    assert step.widths == [1, 2]
    assert out.items.tolist() == [[0, -1, -1, -1]] * 2
    assert out.codes.tolist() == [[[1, 0]] + [[-1, -1]] * 3] * 2
    assert torch.isfinite(out.scores[:, 0]).all() and (out.scores[:, 1:] == float("-inf")).all()
    torch.testing.assert_close(out.scores[:, :1], toy_brute_force(tables, codes, "vocab", sizes=(2, 1)))


def test_bad_arguments_raise():
    codes, tables = toy_catalogue(10, seed=0), toy_tables(2, seed=1)
    with pytest.raises(ValueError, match="beam_width >= top_k"):
        toy_search(tables, codes, beam_width=3, top_k=5)
    with pytest.raises(ValueError, match="normalize"):
        toy_search(tables, codes, beam_width=5, top_k=5, normalize="softmax")
    with pytest.raises(ValueError, match="level_sizes"):
        toy_search(tables, codes, beam_width=5, top_k=5, level_sizes=(3, 5, 2, 5))
    with pytest.raises(ValueError, match="one offset"):
        toy_search(tables, codes, beam_width=5, top_k=5, offsets=OFFSETS[:3])
    with pytest.raises(ValueError, match="start_tokens"):
        toy_search(tables, codes, beam_width=5, top_k=5, start_tokens=torch.ones(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="level 3: step returned logits"):
        toy_search([t[..., :19] for t in tables], codes, beam_width=5, top_k=5)  # level 3 needs tokens 16..19
