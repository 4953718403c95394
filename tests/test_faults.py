"""Fault injection: a tokenizer artifact survives a writer killed at any point, refuses a second writer, and refuses
files that were changed or are missing; the next fit then writes it whole. A feature cache entry survives a writer
killed mid-write, and a damaged one is computed again."""

from __future__ import annotations

import fcntl
import json
import subprocess
import sys
import textwrap

import pytest
import torch

from genrec.features.cache import load_cached, save_cached
from genrec.tokenizer.artifact import ArtifactError, is_complete, load_tokenizer, save_tokenizer
from tests.conftest import ROOT

KWARGS = dict(level_sizes=(4, 4), codebooks=torch.zeros(2, 4, 3), config={"fit": "good"}, metrics={},
              fingerprint="x", plot=False)
GOOD = torch.tensor([[0, 1], [1, 2], [3, 3]])


def _killed_writer(directory, *, where: str) -> int:
    """Runs save_tokenizer over ``directory`` in a child process that SIGKILLs itself at ``where``; its exit code."""
    script = textwrap.dedent(f"""
        import os, signal, torch
        import genrec.tokenizer.artifact as artifact
        import genrec.tokenizer.metrics as metrics
        die = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
        if {where!r} == "mid-files":      # after codes.npy and the codebooks, before the config and the rest
            artifact.json.dumps = lambda *a, **k: die()
        elif {where!r} == "plot":         # after every data file, while drawing the plot
            metrics.plot_items_per_code = die
        elif {where!r} == "between-renames":  # the old artifact moved aside, the new one not yet in place
            real_replace, calls = os.replace, []
            def replace(src, dst):
                calls.append(1)
                if len(calls) == 2:
                    die()
                real_replace(src, dst)
            artifact.os.replace = replace
        artifact.save_tokenizer({str(directory)!r}, codes=torch.tensor([[2, 0], [0, 3], [1, 1]]), level_sizes=(4, 4),
                                codebooks=None, config={{"fit": "new"}}, metrics={{}}, fingerprint="y", plot=True)
    """)
    return subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True).returncode


@pytest.mark.parametrize("where", ["mid-files", "plot", "between-renames"])
def test_a_writer_killed_anywhere_leaves_the_previous_artifact_and_the_next_write_is_whole(tmp_path, where):
    directory = save_tokenizer(tmp_path / "tok", codes=GOOD, **KWARGS)
    assert _killed_writer(directory, where=where) == -9
    if where == "between-renames":
        # Nothing is at the path for the moment, and the error says where the previous artifact is.
        with pytest.raises(FileNotFoundError, match=r"an interrupted write left the previous one in .*\.tok\.old-"):
            load_tokenizer(directory)
        old = next(tmp_path.glob(".tok.old-*"))
        assert torch.equal(load_tokenizer(old).codes, GOOD)
    else:
        ids = load_tokenizer(directory)  # the previous artifact, untouched
        assert torch.equal(ids.codes, GOOD) and ids.config["fit"] == "good"
    again = save_tokenizer(directory, codes=GOOD.flip(0), **KWARGS)  # the next fit writes it whole, and tidies
    assert torch.equal(load_tokenizer(again).codes, GOOD.flip(0))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tok.lock", "tok"]


def test_a_second_writer_is_refused_while_the_first_holds_the_artifact(tmp_path):
    directory = save_tokenizer(tmp_path / "tok", codes=GOOD, **KWARGS)
    with open(tmp_path / ".tok.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a writer in another process holds it
        with pytest.raises(ArtifactError, match=r"tok is being written by another process \(lock .*\.tok\.lock"):
            save_tokenizer(directory, codes=GOOD.flip(0), **KWARGS)
    assert torch.equal(load_tokenizer(directory).codes, GOOD)  # nothing of the refused write landed


@pytest.mark.parametrize("damage", ["changed config", "deleted codes", "empty folder"])
def test_an_altered_or_incomplete_artifact_is_refused_naming_the_file(tmp_path, damage):
    directory = save_tokenizer(tmp_path / "tok", codes=GOOD, **KWARGS)
    if damage == "changed config":  # e.g. an old config copied beside new codes
        (directory / "config.json").write_text('{"fit": "another"}\n')
        message = r"config.json was changed after the artifact was written"
    elif damage == "deleted codes":
        (directory / "codes.npy").unlink()
        message = r"has no codes.npy, which its manifest.json lists"
    else:
        for f in directory.iterdir():
            f.unlink()
        message = r"is incomplete \(no manifest.json"
    with pytest.raises(ArtifactError, match=message):
        load_tokenizer(directory)
    assert is_complete(directory) is (damage != "empty folder")


def _killed_cache_writer(path, *, where: str) -> int:
    """Runs save_cached(path, ...) in a child process that SIGKILLs itself at ``where``; its exit code."""
    script = textwrap.dedent(f"""
        import os, signal, numpy as np
        import genrec.features.cache as cache
        die = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
        if {where!r} == "mid-matrix":     # half of the new matrix's bytes written
            def save(f, array):
                f.write(b"\\x93NUMPY" + bytes(100))
                f.flush()
                die()
            cache.np.save = save
        elif {where!r} == "before-metadata":  # the matrix in place, its metadata not yet
            cache.json.dumps = die
        cache.save_cached(cache.Path({str(path)!r}), np.full((3, 2), 7, dtype=np.float32), {{"fit": "new"}})
    """)
    return subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True).returncode


@pytest.mark.parametrize("where", ["mid-matrix", "before-metadata"])
def test_a_cache_writer_killed_mid_write_leaves_a_whole_entry_and_the_next_write_tidies(tmp_path, where):
    path = tmp_path / "embeddings" / "ds-enc-0123.npy"
    save_cached(path, torch.ones(3, 2), {"fit": "old"})
    assert _killed_cache_writer(path, where=where) == -9
    # Readers see the previous matrix (killed before its rename) or the new one (after it), never a part.
    expected = torch.ones(3, 2) if where == "mid-matrix" else torch.full((3, 2), 7.0)
    assert torch.equal(load_cached(path), expected)
    assert json.loads(path.with_suffix(".json").read_text()) == {"fit": "old"}
    orphans = list(path.parent.glob(".*.tmp"))
    assert len(orphans) == (1 if where == "mid-matrix" else 0)
    save_cached(path, torch.zeros(3, 2), {"fit": "next"})  # the next write is whole and removes the orphan
    assert torch.equal(load_cached(path), torch.zeros(3, 2))
    assert sorted(p.name for p in path.parent.iterdir()) == ["ds-enc-0123.json", "ds-enc-0123.npy"]


def test_a_damaged_cache_entry_is_a_miss_named_in_a_warning(tmp_path, caplog):
    path = tmp_path / "ds-enc-0123.npy"
    save_cached(path, torch.ones(50, 4), {})
    path.write_bytes(path.read_bytes()[:90])  # truncated outside genrec (a full disk, a partial copy)
    with caplog.at_level("WARNING"):
        assert load_cached(path) is None
    assert f"{path}: unreadable cache entry" in caplog.text
    save_cached(path, torch.ones(50, 4), {})  # the caller computes it again and rewrites it
    assert torch.equal(load_cached(path), torch.ones(50, 4))
