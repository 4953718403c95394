"""The repository layout guards: `tokenizers/` is data only and never shadows HuggingFace's library."""

import subprocess
import sys
from pathlib import Path

import genrec

ROOT = Path(genrec.__file__).resolve().parents[1]


def test_tokenizers_folder_holds_no_python():
    assert (ROOT / "tokenizers").is_dir()
    assert not list((ROOT / "tokenizers").rglob("*.py"))


def test_import_tokenizers_is_huggingface():
    # `python -c` from the repository root puts the root first on sys.path, as `python train.py` does: the
    # top-level `tokenizers/` folder must not shadow HuggingFace's package.
    code = "import sys, tokenizers; assert sys.path[0] in ('', '.'); print(tokenizers.__file__); tokenizers.Tokenizer"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    path = Path(out.stdout.strip()).resolve()
    # Installed, not the data folder: a virtual environment inside the clone (`python -m venv .venv`) is fine.
    assert not path.is_relative_to(ROOT / "tokenizers"), path
    assert "site-packages" in path.parts or "dist-packages" in path.parts, path

