"""The parts of genrec import one way: entry -> seq2seq | baselines -> decoding, tokenizer -> features -> data.

Every ``import`` in genrec/ counts, the lazy ones inside functions too: a lazy import still makes one part depend
on another, and hiding a cycle that way is what this test exists to stop.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import genrec

PACKAGE = Path(genrec.__file__).resolve().parent
ENTRY = {"genrec.cli", "genrec.pipeline"}
# Part -> the parts it may import. Shared utilities (modules directly under genrec/: metrics, training, report,
# provenance) may be imported by every part and themselves import only data and each other.
ALLOWED = {
    "entry": {"entry", "seq2seq", "baselines", "decoding", "tokenizer", "features", "data", "shared"},
    "seq2seq": {"seq2seq", "decoding", "tokenizer", "features", "data", "shared"},
    "baselines": {"baselines", "decoding", "features", "data", "shared"},
    "decoding": {"decoding", "shared"},
    "tokenizer": {"tokenizer", "features", "data", "shared"},
    "features": {"features", "data", "shared"},
    "data": {"data", "shared"},
    "shared": {"shared", "data"},
}


def part_of(module: str) -> str | None:
    """The part a genrec module belongs to; None outside genrec."""
    names = module.split(".")
    if names[0] != "genrec":
        return None
    if module in ENTRY:
        return "entry"
    if len(names) == 1 or names[1] not in ALLOWED:
        return "shared"
    return names[1]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(source: str, module: str, *, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, module) of every import in the source of ``module``, relative ones resolved."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source, filename=module)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                names = package.split(".")
                base = ".".join(names[: len(names) - node.level + 1] + ([base] if base else []))
            found.append((node.lineno, base))
    return found


def import_graph() -> dict[str, list[tuple[int, str]]]:
    return {
        module_name(f): imports(f.read_text(), module_name(f), is_package=f.name == "__init__.py")
        for f in sorted(PACKAGE.rglob("*.py"))
    }


def order_violations(graph: dict[str, list[tuple[int, str]]]) -> list[str]:
    bad = []
    for module, targets in graph.items():
        src = part_of(module)
        for line, target in targets:
            dst = part_of(target)
            if dst is not None and dst not in ALLOWED[src]:
                bad.append(f"{module}:{line}: {src} -> {dst} ({target})")
    return bad


def part_cycles(graph: dict[str, list[tuple[int, str]]]) -> list[tuple[str, str]]:
    """Pairs of distinct parts that import each other (directly or through others)."""
    edges = {p: set() for p in ALLOWED}
    for module, targets in graph.items():
        for _, target in targets:
            if part_of(target) is not None and part_of(target) != part_of(module):
                edges[part_of(module)].add(part_of(target))

    def reaches(a: str, b: str) -> bool:
        seen, todo = set(), [a]
        while todo:
            node = todo.pop()
            if node == b:
                return True
            if node not in seen:
                seen.add(node)
                todo += edges[node]
        return False

    return sorted((a, b) for a in edges for b in edges[a] if reaches(b, a))


def test_every_import_follows_the_order_of_parts():
    assert order_violations(import_graph()) == []


def test_no_cycle_between_parts():
    assert part_cycles(import_graph()) == []


@pytest.mark.parametrize(
    ("source", "module", "expected"),
    [
        ("from genrec.seq2seq.vocab import CodeVocab\n", "genrec.decoding.beam_search", "decoding -> seq2seq"),
        ("from genrec.tokenizer import load_tokenizer\n", "genrec.features.graph", "features -> tokenizer"),
        ("def f():\n    from genrec.cli import main\n", "genrec.seq2seq.data", "seq2seq -> entry"),
        ("from ..seq2seq import module\n", "genrec.baselines.sasrec", "baselines -> seq2seq"),
        ("import genrec.features.text\n", "genrec.data.dataset", "data -> features"),
    ],
)
def test_the_check_catches_backward_imports(source, module, expected):
    """The checks fail on the imports they exist to stop: direct, lazy, relative and plain ``import``."""
    graph = import_graph()
    graph[module] = graph.get(module, []) + imports(source, module)
    assert any(expected in line for line in order_violations(graph))
    if expected == "seq2seq -> entry":  # the entry layer imports seq2seq: this one closes a cycle
        assert ("entry", "seq2seq") in part_cycles(graph)
