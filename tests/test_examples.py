"""The example scripts run end to end with tiny settings. The two power examples (16-21 s each) run in
the slow step: their functions are tested on their own in test_power_*.py; the default suite keeps the
residual example."""

import importlib.util
import json
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # 14-18 s: the default suite stays under its 10 minutes
def test_residual_around_predictor_runs(tmp_path):
    summary = _load("residual_around_predictor").main(
        ["--genes", "40", "--max-epochs", "5", "--mlp-epochs", "5", "--n-samples", "30", "--out", str(tmp_path)])
    assert (tmp_path / "intervals.png").stat().st_size > 10_000
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["n_genes"] == 40 and set(report["coverage"]) >= {"0.5", "0.8", "0.9", "0.95"}
    assert 0 <= summary["coverage"]["0.9"] <= 1


@pytest.mark.slow
def test_power_yeast_pilot_runs(tmp_path):
    summary = _load("power_yeast_pilot").main(
        ["--n", "3,6", "--genes", "300", "--draws", "3", "--reference-n", "10", "--max-epochs", "50",
         "--out", str(tmp_path)])
    assert (tmp_path / "power.png").stat().st_size > 10_000
    saved = json.loads((tmp_path / "power.json").read_text())
    assert [r["n_per_group"] for r in saved["per_n"]] == [3, 6] and len(saved["pilot"]) == 6
    for r in summary["per_n"]:
        assert 0 <= r["power_lower"] <= r["power"] <= r["power_upper"] <= 1
        assert 0 <= r["power_by_min_abs_lfc"]["1"]["mean"] <= 1
    assert saved["settings"]["reference_n"] == 10


@pytest.mark.slow
def test_power_pbmc_pseudobulk_runs(tmp_path):
    out = _load("power_pbmc_pseudobulk").main(
        ["--n", "3,5", "--cells", "50,400", "--draws", "2", "--rep", "1", "--max-epochs", "50", "--out", str(tmp_path)])
    assert out["pilot"] == {"ctrl101": 100, "ctrl107": 44, "stim101": 100, "stim107": 54}  # B cells
    for c in ("50", "400"):
        assert (tmp_path / f"cells_{c}" / "power.png").stat().st_size > 10_000
        assert (tmp_path / f"cells_{c}" / "power.nc").exists()
        saved = json.loads((tmp_path / f"cells_{c}" / "power.json").read_text())
        assert saved["settings"]["unit"] == "subjects per group" and saved["settings"]["cells_per_subject"] == int(c)
        assert [r["n_per_group"] for r in saved["per_n"]] == [3, 5]
        for r in saved["per_n"]:
            assert 0 <= r["power_lower"] <= r["power"] <= r["power_upper"] <= 1
    # more cells per subject: a library 8 times larger, from the same UMIs per cell
    s50, s400 = (out["per_cells"][c]["settings"] for c in ("50", "400"))
    assert abs(s400["depth"] / s50["depth"] - 8) < 1e-9 and s50["umi_per_cell"] == s400["umi_per_cell"]
