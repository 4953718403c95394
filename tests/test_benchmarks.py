"""The benchmark drivers' own logic: how an ablation picks its row from validation, and how the side-by-side run
reads its config entries."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import ROOT, load_benchmark

ablation = load_benchmark("ablation")
systems = load_benchmark("systems")

CSV = """epoch,step,train/loss,val/ndcg@10,val/ndcg@20,val/recall@10,val/recall@20
0,99,5.0,,,,
1,199,,0.020,0.025,0.040,0.060
2,299,4.0,,,,
3,399,,0.031,0.036,0.058,0.081
5,599,,0.029,0.035,0.061,0.083
"""


def test_ablation_row_is_the_best_validation_by_ndcg(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text(CSV)
    best = ablation.best_validation(path)
    assert best["epoch"] == 3 and best["ndcg@10"] == 0.031 and best["recall@10"] == 0.058  # not the higher recall
    assert [h["epoch"] for h in best["history"]] == [1, 3, 5]
    path.write_text("epoch,step,train/loss\n0,9,5.0\n")
    with pytest.raises(SystemExit, match="no validation ran"):
        ablation.best_validation(path)


def test_ablation_plan_is_checked_and_tabled(tmp_path):
    plan = tmp_path / "plan.yaml"
    plan.write_text("base: b.yaml\nconfig: c.yaml\nvariants:\n  - {name: a, args: []}\n  - {name: A, args: [x]}\n")
    with pytest.raises(SystemExit, match="share a name"):
        ablation.load_plan(plan)
    plan.write_text("base: b.yaml\nvariants:\n  - {name: a}\n")
    with pytest.raises(SystemExit, match="missing 'config'"):
        ablation.load_plan(plan)
    plan.write_text("base: b.yaml\nconfig: c.yaml\nvariants:\n  - {name: a}\n  - {name: b, against: z}\n")
    with pytest.raises(SystemExit, match="which the plan lacks"):
        ablation.load_plan(plan)
    for path in sorted((ROOT / "benchmarks" / "plans").glob("*.yaml")):  # the shipped plans are valid
        ablation.load_plan(path)
    row = {"config": "c.yaml", "args": [], "validation": {"recall@10": 0.05, "ndcg@10": 0.025, "epoch": 3},
           "wall_seconds": 600, "commit": "abc", "load": 1.0}
    other = {**row, "name": "lever", "args": ["--x=1"], "validation": {"recall@10": 0.06, "ndcg@10": 0.03, "epoch": 3}}
    on_top = {**row, "name": "more", "args": ["--x=1", "--y=2"],
              "validation": {"recall@10": 0.06, "ndcg@10": 0.033, "epoch": 3}}
    variants = [{"name": "ref"}, {"name": "lever"}, {"name": "more", "against": "lever"}]
    text = ablation.table({"config": "c.yaml", "variants": variants}, [{**row, "name": "ref"}, other, on_top])
    assert "| ref | (reference) | 0.0500 | 0.0250 |  | 3 | 10.0 min | abc | 1.0 |" in text
    assert "| lever | --x=1 — vs ref | 0.0600 | 0.0300 | +20.0 % |" in text
    assert "| more | --y=2 — vs lever | 0.0600 | 0.0330 | +10.0 % |" in text


def test_side_by_side_entries_take_the_base_or_their_own_list():
    assert systems.config_files("configs/base/cpu.yaml", "configs/tiger/beauty-cpu.yaml") == [
        "configs/base/cpu.yaml", "configs/tiger/beauty-cpu.yaml"]
    assert systems.config_files("configs/base/cpu.yaml", "configs/base/baseline.yaml,configs/sasrec/beauty.yaml") == [
        "configs/base/baseline.yaml", "configs/sasrec/beauty.yaml"]
    with pytest.raises(SystemExit, match="no such file"):
        systems.config_files("configs/base/cpu.yaml", "configs/tiger/nope.yaml")
    assert Path(ROOT / "configs/base/baseline.yaml").exists()


def test_memmap_fit_reports_each_level_and_codes_every_row(tmp_path):
    import numpy as np

    tokenizer_fit = load_benchmark("tokenizer_fit")
    path = tmp_path / "blobs.npy"
    tokenizer_fit.write_blobs(path, n=3000, dim=8, centres=50, chunk_rows=700)
    x = np.load(path, mmap_mode="r")
    assert x.shape == (3000, 8) and x.dtype == np.float32
    assert np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    result = tokenizer_fit.fit_memmap(path, levels=2, codebook_size=8, max_points_per_centroid=64, chunk_size=1000)
    assert result["codes"].shape == (3000, 2) and result["codes"].unique().numel() == 8
    assert [level["sample_size"] for level in result["levels"]] == [512, 512]
    assert all(level["refine_iterations"] >= 1 and level["seconds"] > 0 for level in result["levels"])
    assert result["levels"][1]["inertia"] < result["levels"][0]["inertia"] and result["peak_rss_mib"] > 0
