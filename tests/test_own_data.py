"""Your own data in one command (issue 16): item text found from the item file's fields, semantic-ID sizes from the
catalogue, artifacts named from the dataset and the settings, ``python -m genrec.data inspect``, and the run
itself on generated datasets in the three formats (RecBole field names, a CSV with named columns)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from genrec.cli import entry, main
from genrec.data import load_dataset
from genrec.data.__main__ import main as data_main
from genrec.data.text import DEFAULT_TEMPLATE, ItemTextError, choose_template, item_texts, resolve_template
from genrec.tokenizer.artifact import load_tokenizer
from genrec.tokenizer.recipe import RecipeError, TokenizerSettings, derive_tokenizer
from genrec.tokenizer.sizes import catalogue_sizes
from tests.conftest import own_data

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "tokenizer" / "rqkmeans.yaml"


def odd_fields(root: Path) -> Path:
    """RecBole files whose item fields are neither title- nor category-like."""
    root.mkdir(parents=True)
    (root / "odd.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n1\ta\t1\n1\tb\t2\n2\tb\t1\n")
    (root / "odd.item").write_text("item_id:token\tcode:token\tcolour:token_seq\na\tx1\tdeep red\nb\tx2\tblue\n")
    return root


# --- item text --------------------------------------------------------------------------------------------------


def test_item_text_is_the_default_template_else_the_title_and_category_like_fields(tmp_path, caplog):
    sequences = load_dataset(own_data(tmp_path / "s", "sequences"))
    assert resolve_template(sequences) == DEFAULT_TEMPLATE
    assert item_texts(sequences)[0][0] == "Film 1 (1950). Films > Action"

    recbole = load_dataset(own_data(tmp_path / "ml", "recbole"))  # movie_title, release_year, class
    with caplog.at_level(logging.INFO, logger="genrec.data.text"):
        texts, empty = item_texts(recbole)
    assert texts[recbole.item_ids.index("1")] == "Film 1 (1950). Action" and empty == []
    assert "item text is '{movie_title}. {class}'" in caplog.text
    assert "title-like field movie_title, category-like field class" in caplog.text
    # An explicit template always wins.
    assert choose_template(recbole, "{movie_title} ({release_year})") == ("{movie_title} ({release_year})", "as set")
    assert item_texts(recbole, "{class}")[0][recbole.item_ids.index("1")] == "Action"


def test_item_text_is_never_empty_without_being_asked(tmp_path, monkeypatch):
    odd = load_dataset(odd_fields(tmp_path / "odd"))
    with pytest.raises(ItemTextError) as error:
        item_texts(odd)
    message = str(error.value)
    assert "finds no field, and no field looks like a title or a category" in message
    assert "code (2 items, e.g. 'x1'), colour (2 items, e.g. 'deep red')" in message
    assert 'template: "{code}. {colour}"' in message and "--data.tokenizer_settings.template" in message
    with pytest.raises(ItemTextError, match=r"no item has any field of template '\{title\}'"):
        item_texts(odd, "{title}")
    with pytest.raises(ItemTextError, match="has no item text"):
        item_texts(load_dataset(own_data(tmp_path / "c", "csv")))

    from genrec.features import text as emb

    def fail(*args, **kwargs):
        raise AssertionError("nothing is embedded when the items have no text")

    monkeypatch.setattr(emb, "encode_texts", fail)
    with pytest.raises(ItemTextError, match="colour"):
        emb.text_embeddings(odd_fields(tmp_path / "odd2"), missing_text="empty", cache_dir=tmp_path)


# --- sizes ------------------------------------------------------------------------------------------------------


def test_sizes_fit_the_catalogue_and_keep_tigers_for_its_size():
    assert catalogue_sizes(12_101) == (3, 256)  # Amazon Beauty: TIGER's own sizes
    assert catalogue_sizes(18_357) == (3, 256)  # Sports
    assert catalogue_sizes(1_682) == (3, 32)  # MovieLens-100K
    assert catalogue_sizes(3_706) == (3, 64)  # MovieLens-1M
    assert catalogue_sizes(2_000_000) == (4, 256)
    assert catalogue_sizes(1_682, codebook_size=8) == (5, 8)  # a set size: the levels follow it
    previous = 0
    for n in (2, 5, 27, 100, 500, 1_000, 5_000, 20_000, 10**6):
        levels, k = catalogue_sizes(n)
        assert k >= previous and 2 <= k <= min(n, 256) and levels >= 3 and k**levels >= 16 * n
        previous = k


def _fit(tmp_path: Path, **sizes) -> tuple[int, ...]:
    import lightning.pytorch as pl

    from genrec.tokenizer.datamodule import ItemFeatures
    from genrec.tokenizer.lightning import RQKMeansTokenizer

    out = tmp_path / f"tok-{len(list(tmp_path.iterdir()))}"
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    features = torch.randn(200, 8, generator=torch.Generator().manual_seed(0))
    trainer.fit(RQKMeansTokenizer(output_dir=str(out), max_iter=5, **sizes),
                datamodule=ItemFeatures(features=features, batch_size=None))
    return load_tokenizer(out).level_sizes


def test_tokenizer_sizes_default_from_the_catalogue_and_a_setting_wins(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="genrec.tokenizer.sizes"):
        assert _fit(tmp_path)[:3] == (16, 16, 16)  # 200 items
    assert "RQ-KMeans: 3 levels x 16 codes for 200 items, from the catalogue size" in caplog.text
    assert "set model.init_args.levels / model.init_args.codebook_size to choose" in caplog.text
    assert _fit(tmp_path, codebook_size=8)[:4] == (8, 8, 8, 8)
    assert _fit(tmp_path, levels=2, codebook_size=8)[:2] == (8, 8)


def test_a_codebook_too_large_for_the_catalogue_is_warned_about(tmp_path, caplog):
    from genrec.tokenizer.export import write_artifact

    features = torch.randn(100, 4)
    codes = torch.stack([torch.zeros(100, dtype=torch.long), torch.arange(100) % 64, torch.arange(100) // 64], 1)
    with caplog.at_level(logging.WARNING, logger="genrec.tokenizer.export"):
        write_artifact(tmp_path / "big", features=features, codes=codes, raw_codes=codes[:, :2],
                       reconstruction=features, level_sizes=(64, 64, 2), codebooks=None, config={}, fit_seconds=0.0)
    assert "level 0 uses 1.0 of its 64 codes (perplexity): the codebook is large for 100 items" in caplog.text
    assert "level 1" not in caplog.text and "level 2" not in caplog.text  # well used; the collision level is not


# --- names ------------------------------------------------------------------------------------------------------


def test_artifacts_are_named_from_the_dataset_and_the_settings(tmp_path):
    a = own_data(tmp_path / "a" / "ml", "recbole")
    b = own_data(tmp_path / "b" / "ml", "recbole", seed=1)  # same name, another dataset
    first = derive_tokenizer(str(a), RECIPE)
    assert first == derive_tokenizer(str(a), RECIPE)  # an unchanged run finds its artifact again
    assert first.path.startswith("tokenizers/ml-rqkmeans-3x16-")
    assert f"--data.init_args.dataset={a}" in first.fit_args
    assert f"--model.init_args.output_dir={first.path}" in first.fit_args
    assert "--model.init_args.levels=3" in first.fit_args and "--model.init_args.codebook_size=16" in first.fit_args
    names = {first.path, derive_tokenizer(str(b), RECIPE).path,
             derive_tokenizer(str(a), RECIPE, TokenizerSettings(codebook_size=8)).path,
             derive_tokenizer(str(a), RECIPE, TokenizerSettings(template="{movie_title}")).path}
    copy = tmp_path / "c" / "ml"
    shutil.copytree(a, copy)
    names.add(derive_tokenizer(str(copy), RECIPE).path)  # the same files elsewhere: not the same dataset
    with open(copy / "ml.inter", "a") as f:
        f.write("1\t2\t3\t999999999999\n")
    names.add(derive_tokenizer(str(copy), RECIPE).path)  # its files changed
    assert len(names) == 6
    # A recipe's explicit size wins over the catalogue; the run's setting wins over the recipe.
    spec = yaml.safe_load(RECIPE.read_text())
    spec["model"]["init_args"]["codebook_size"] = 8
    explicit = tmp_path / "explicit.yaml"
    explicit.write_text(yaml.safe_dump(spec))
    assert "-explicit-4x8-" in derive_tokenizer(str(a), explicit).path
    assert "-explicit-3x32-" in derive_tokenizer(str(a), explicit, TokenizerSettings(codebook_size=32)).path


def test_a_dataset_without_item_text_gets_cooccurrence_features(tmp_path, caplog):
    csv = own_data(tmp_path / "csv", "csv")
    with caplog.at_level(logging.WARNING, logger="genrec.tokenizer.recipe"):
        derived = derive_tokenizer(str(csv), RECIPE)
    (sources,) = [a for a in derived.fit_args if a.startswith("--data.init_args.sources=")]
    assert "CooccurrenceFeatures" in sources and "TextEmbeddings" not in sources
    assert "has no item text" in caplog.text and "uses CooccurrenceFeatures instead" in caplog.text
    pq = derive_tokenizer(str(csv), ROOT / "configs" / "tokenizer" / "text-cooc-pq16.yaml")
    (sources,) = [a for a in pq.fit_args if a.startswith("--data.init_args.sources=")]
    assert sources.count("class_path") == 1 and '"dim": 64, "window": 3' in sources  # the recipe's own half
    assert "-text-cooc-pq16-16x16-" in pq.path  # 16 digits as the recipe sets, 16 codes from the catalogue
    graph = derive_tokenizer(str(csv), ROOT / "configs" / "tokenizer" / "graph-rqvae.yaml")  # MMGRec's recipe
    (sources,) = [a for a in graph.fit_args if a.startswith("--data.init_args.sources=")]
    assert "GraphFeatures" in sources and "CooccurrenceFeatures" in sources and "TextEmbeddings" not in sources
    with pytest.raises(ItemTextError, match="has no item text"):
        derive_tokenizer(str(csv), RECIPE, TokenizerSettings(template="{title}"))


def test_the_recipe_on_beauty_keeps_tigers_sizes():
    derived = derive_tokenizer("amazon-beauty", RECIPE)
    assert derived.path.startswith("tokenizers/amazon-beauty-rqkmeans-3x256-")
    assert not any(a.startswith("--data.init_args.sources=") for a in derived.fit_args)  # the recipe's text source


def test_settings_the_tokenizer_has_no_place_for_are_refused(tmp_path):
    data = own_data(tmp_path / "s", "sequences")
    colarec = ROOT / "configs" / "tokenizer" / "beauty-colarec.yaml"
    with pytest.raises(RecipeError, match="ConstrainedKMeansTokenizer has no codebook_size to set"):
        derive_tokenizer(str(data), colarec, TokenizerSettings(codebook_size=8))
    with pytest.raises(RecipeError, match="has no text source for the template"):
        derive_tokenizer(str(data), ROOT / "configs/tokenizer/debug.yaml", TokenizerSettings(template="{title}"))
    spec = yaml.safe_load(RECIPE.read_text())
    spec["data"]["init_args"]["sources"][0]["init_args"]["template"] = "{plot}"
    (tmp_path / "own.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(ItemTextError, match="no item has any field of template '{plot}'.* title \\(112 items"):
        derive_tokenizer(str(data), tmp_path / "own.yaml")  # before anything is fitted
    settings = TokenizerSettings(template="{title}")  # the run's template wins over the config's
    assert '"template": "{title}"' in " ".join(derive_tokenizer(str(data), tmp_path / "own.yaml", settings).fit_args)
    with pytest.raises(RecipeError, match="no dataset: name one with --data.dataset"):
        derive_tokenizer(None, RECIPE)
    with pytest.raises(RecipeError, match="tokenizer config nope.yaml does not exist"):
        derive_tokenizer(str(data), "nope.yaml")


# --- inspect ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("layout", "format_line", "text_lines"), [
    ("sequences", "format       sequences.txt: ", ["item text    '{title}. {categories}' (the default); 0 items",
                                                 "  [1] Film 1 (1950). Films > Action"]),
    ("recbole", "format       RecBole atomic files: ", ["item text    '{movie_title}. {class}' (the item file has no "
                                                       "title or categories field: title-like field movie_title",
                                                       "  movie_title     ", "  release_year    ",
                                                       "  [1] Film 1 (1950). Action"]),
    ("csv", "format       interactions table: ", ["item fields  none: no item file"]),
])
def test_inspect_shows_format_fields_item_text_and_counts(tmp_path, capsys, layout, format_line, text_lines):
    path = own_data(tmp_path / "d", layout, users=30, items=60)
    assert data_main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    ds = load_dataset(path)
    assert format_line in out
    assert f"counts       30 users, {ds.n_items} items, 240 interactions; 8-8 per user" in out
    # 30 users x (8 items - validation - test - the first item, which has no history) training samples
    assert "split        leave-one-out, histories of 20: 150 training samples, 30 validation, 30 test" in out
    for line in text_lines:
        assert line in out, line


def test_inspect_says_what_is_wrong_with_the_item_text(tmp_path, capsys):
    assert data_main(["inspect", str(odd_fields(tmp_path / "odd"))]) == 0
    out = capsys.readouterr().out
    assert "  code  " in out and "'deep red' | 'blue'" in out and 'item text    none: ' in out
    assert 'template: "{code}. {colour}"' in out
    assert data_main(["inspect", str(odd_fields(tmp_path / "odd2")), "--template", "{colour}!"]) == 0
    assert "item text    '{colour}!' (as set)" in capsys.readouterr().out
    assert data_main(["inspect", str(tmp_path / "missing")]) == 2


# --- one command ------------------------------------------------------------------------------------------------


def _quick(out: Path) -> list[str]:
    return ["--trainer.max_epochs=1", "--trainer.logger=false", "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false", f"--trainer.default_root_dir={out}", "--examples=1"]


def artifacts(root: Path) -> list[Path]:
    """The tokenizer artifacts under ``root/tokenizers`` (not their writers' hidden lock files)."""
    return [p for p in (root / "tokenizers").iterdir() if not p.name.startswith(".")]


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Runs from a temporary folder (artifacts go to its tokenizers/), with a cold feature cache."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GENREC_CACHE", str(tmp_path / "cache"))
    return tmp_path


def test_one_command_on_recbole_files_fits_everything_it_needs(in_tmp, tiny_encoder, capsys):
    """configs/tiger/cpu.yaml given only the dataset (and, to keep the test cheap, a recipe whose encoder is a tiny
    BERT): text template found, sizes from the catalogue, tokenizer fitted and named, trained, tested, examples."""
    spec = yaml.safe_load(RECIPE.read_text())
    spec["data"]["init_args"]["sources"][0]["init_args"]["encoder"] = tiny_encoder
    recipe = in_tmp / "rqkmeans-tiny.yaml"
    recipe.write_text(yaml.safe_dump(spec))
    data = own_data(in_tmp / "ml-like", "recbole")
    args = ["fit", "--config", str(ROOT / "configs/base/cpu.yaml"), "--config", str(ROOT / "configs/tiger/cpu.yaml"),
            f"--data.dataset={data}", f"--data.tokenizer_config={recipe}", *_quick(in_tmp / "run")]
    cli = main(args)
    (artifact,) = artifacts(in_tmp)
    assert artifact.name.startswith("ml-like-rqkmeans-tiny-3x16-")
    assert cli.datamodule.hparams.tokenizer == f"tokenizers/{artifact.name}"
    ids = load_tokenizer(artifact)
    assert ids.level_sizes[:3] == (16, 16, 16) and ids.config["data"]["dataset"] == str(data)
    out = capsys.readouterr().out
    assert '"test/recall@10"' in out and "Film " in out  # the metrics, and examples titled from movie_title
    written = (artifact / "manifest.json").stat().st_mtime_ns
    again = main(args[1:], run=False)  # found: nothing is fitted again
    assert (artifact / "manifest.json").stat().st_mtime_ns == written
    assert again.datamodule.catalogue.semantic_ids.path == Path(f"tokenizers/{artifact.name}")


@pytest.mark.parametrize("layout", ["csv", "sequences"])
def test_one_command_on_a_table_or_sequences_with_the_parallel_id_model(in_tmp, layout, tiny_encoder):
    """configs/rpg/cpu.yaml given only the dataset: a CSV (no item text: co-occurrence features alone) or
    sequences.txt with items.jsonl (text, through a tiny encoder, and co-occurrence)."""
    data = own_data(in_tmp / "mine", layout)
    args = ["fit", "--config", str(ROOT / "configs/base/baseline.yaml"), "--config", str(ROOT / "configs/rpg/cpu.yaml"),
            f"--data.dataset={data}", *_quick(in_tmp / "run")]
    recipe = ROOT / "configs/tokenizer/text-cooc-pq16.yaml"
    if layout == "sequences":
        spec = yaml.safe_load(recipe.read_text())
        spec["data"]["init_args"]["sources"][0]["init_args"]["encoder"] = tiny_encoder
        recipe = in_tmp / "text-cooc-pq16.yaml"
        recipe.write_text(yaml.safe_dump(spec))
    main([*args, f"--data.tokenizer_config={recipe}", "--data.tokenizer_settings.codebook_size=8"])
    (artifact,) = artifacts(in_tmp)
    assert artifact.name.startswith(f"{data.name.split('.')[0]}-text-cooc-pq16-16x8-")
    sources = [s["type"] for s in load_tokenizer(artifact).config["data"]["sources"]]
    assert sources == (["CooccurrenceFeatures"] if layout == "csv" else ["TextEmbeddings", "CooccurrenceFeatures"])


def test_bad_runs_are_one_line_errors_naming_what_to_set(in_tmp, capsys):
    experiment = ["fit", "--config", str(ROOT / "configs/base/cpu.yaml"),
                  "--config", str(ROOT / "configs/tiger/cpu.yaml"), f"--data.tokenizer_config={RECIPE}"]
    assert entry(experiment) == 2
    assert "train.py: error: no dataset: name one with --data.dataset" in capsys.readouterr().err
    assert entry([*experiment, f"--data.dataset={odd_fields(in_tmp / 'odd')}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "its item fields are: code (2 items" in err and "template:" in err
    data = own_data(in_tmp / "ml", "recbole")
    assert entry([*experiment, f"--data.dataset={data}", "--data.tokenizer=tokenizers/x",
                  "--data.tokenizer_settings.levels=2"]) == 2
    assert "data.tokenizer_settings apply to a tokenizer named from them" in capsys.readouterr().err
    assert not (in_tmp / "tokenizers").exists()  # nothing was fitted on the way to any of these errors
