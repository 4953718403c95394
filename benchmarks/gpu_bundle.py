"""What the bare GPU machine lacks, gathered on CPU into one folder that travels with the working tree.

The GPU machine (``/work/.library/device``) is offline, with its own Python 3.12 where torch, lightning,
transformers, einops and numpy are installed but jsonargparse (Lightning's CLI needs it, with its ``signatures``
extras) is not, and neither are wandb and the MiniLM weights. Only the working tree travels there, 64 MiB at most.
So the bundle holds:

* ``wheels/``: jsonargparse, docstring_parser and typeshed_client at the versions installed here (tested here),
  as wheels for that Python and platform (all three are pure Python);
* ``tokenizers/beauty-rqkmeans``: the Beauty tokenizer artifact (copied from the checkout, or fitted here from the
  cached MiniLM text embeddings), so nothing is embedded there;
* ``MANIFEST.json``: the commit it was made at, the versions, the files and the install line.

W&B is not needed: the suite's runs log nothing (``--trainer.logger=false``, ``WANDB_MODE=disabled``).

    python benchmarks/gpu_suite.py --prepare .gpu-bundle   (.gpu-bundle/ is ignored by git; name it in carry)
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ("jsonargparse", "docstring_parser", "typeshed_client")  # missing there
TARGET = {"python": "3.12", "platforms": ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")}
TREE_LIMIT = 64 * 2**20  # what travels to the GPU machine: the working tree with the bundle
TOKENIZER = "tokenizers/beauty-rqkmeans"
SITE = "/tmp/genrec-site"


def tokenizer_path(bundle: str | Path | None) -> Path | None:
    """The Beauty tokenizer artifact: the bundle's, else the checkout's, else None (train.py would fit one)."""
    for base in filter(None, [bundle and Path(bundle), ROOT]):
        if (base / TOKENIZER / "manifest.json").is_file():
            return base / TOKENIZER
    return None


def pip_download_command(versions: dict[str, str], dest: Path) -> list[str]:
    """``pip download`` of exact versions as wheels for the GPU machine's Python and platform, without their
    dependencies (each missing one is named in :data:`WHEELS`)."""
    platforms = [a for p in TARGET["platforms"] for a in ("--platform", p)]
    return [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
            TARGET["python"], "--implementation", "cp", *platforms, "-d", str(dest),
            *[f"{name}=={version}" for name, version in versions.items()]]


def install_line(bundle: Path) -> str:
    """The one line that installs the bundle's wheels on the GPU machine and runs the suite, from the checkout."""
    where = Path(bundle).resolve()
    shown = where.relative_to(ROOT) if where.is_relative_to(ROOT) else where
    return (f"python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target {SITE} "
            f"{shown}/wheels/*.whl && export PYTHONPATH={SITE} && python3 benchmarks/gpu_suite.py --bundle {shown} "
            "--out $OUT/suite")


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def tree_bytes(exclude: Path) -> int | None:
    """Bytes of the working tree that travels (tracked, and untracked but not ignored, files) outside ``exclude``;
    None outside a git checkout."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                                capture_output=True, check=True, timeout=30).stdout.decode().split("\0")
    except (OSError, subprocess.SubprocessError):
        return None
    paths = [ROOT / p for p in listed if p]
    return sum(p.stat().st_size for p in paths if p.is_file() and not p.resolve().is_relative_to(exclude.resolve()))


def check_size(bundle_bytes: int, tree: int | None) -> None:
    """Refuses a bundle that, with the working tree, exceeds what travels to the GPU machine."""
    total = bundle_bytes + (tree or 0)
    if total > TREE_LIMIT:
        raise SystemExit(f"the bundle ({bundle_bytes / 2**20:.1f} MiB) and the working tree ({(tree or 0) / 2**20:.1f}"
                         f" MiB) come to {total / 2**20:.1f} MiB, over the {TREE_LIMIT // 2**20} MiB that travel: "
                         "remove untracked files from the checkout or files from the bundle")


def prepare(bundle: Path) -> int:
    """Gathers what the GPU machine lacks into ``bundle`` (module docstring) and prints how to install it there."""
    from importlib.metadata import PackageNotFoundError, version

    from genrec.provenance import git_commit
    from genrec.tokenizer.artifact import is_complete

    bundle.mkdir(parents=True, exist_ok=True)
    wheels = bundle / "wheels"
    shutil.rmtree(wheels, ignore_errors=True)  # one version of each: two would stop the install there
    try:
        versions = {name: version(name) for name in WHEELS}
    except PackageNotFoundError as error:
        raise SystemExit(f"--prepare: {error.name} is not installed here (pip install -e '.[test]')") from None
    print(f"[1/3] wheels for Python {TARGET['python']} ({', '.join(TARGET['platforms'])}): {versions}", flush=True)
    subprocess.run(pip_download_command(versions, wheels), check=True)
    tokenizer = bundle / TOKENIZER
    if is_complete(tokenizer):
        print(f"[2/3] the tokenizer artifact is there already: {tokenizer}", flush=True)
    elif is_complete(ROOT / TOKENIZER):
        print(f"[2/3] copying the tokenizer artifact {ROOT / TOKENIZER}", flush=True)
        shutil.rmtree(tokenizer, ignore_errors=True)
        shutil.copytree(ROOT / TOKENIZER, tokenizer)
    else:
        print("[2/3] fitting the Beauty tokenizer (residual k-means of the MiniLM text embeddings)", flush=True)
        shutil.rmtree(tokenizer, ignore_errors=True)
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([sys.executable, "train.py", "fit", "--config", "configs/tokenizer/beauty-rqkmeans.yaml",
                            f"--model.init_args.output_dir={tokenizer.resolve()}", f"--trainer.default_root_dir={tmp}",
                            "--trainer.enable_progress_bar=false"], cwd=ROOT, check=True)
    size, tree = folder_bytes(bundle), tree_bytes(bundle)
    manifest = {"commit": git_commit(), "date": time.strftime("%Y-%m-%d"), "target": TARGET, "wheels": versions,
                "files": sorted(str(f.relative_to(bundle)) for f in bundle.rglob("*") if f.is_file()),
                "bytes": size, "install": install_line(bundle)}
    (bundle / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")
    size = folder_bytes(bundle)
    travels = f"{(size + tree) / 2**20:.1f} MiB" if tree is not None else "unknown (not a git checkout)"
    print(f"[3/3] {bundle}: {size / 2**20:.1f} MiB; with the working tree {travels} of the "
          f"{TREE_LIMIT // 2**20} MiB that travel", flush=True)
    check_size(size, tree)
    if not bundle.resolve().is_relative_to(ROOT):
        print(f"note: only the checkout travels to the GPU machine: put the bundle inside {ROOT}, ignored by git, and "
              "name it in the run's carry", flush=True)
    print(f"\nOn the GPU machine, from the checkout:\n{install_line(bundle)}")
    return 0
