"""The example scripts run end to end with tiny settings."""

import importlib.util
import json
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_residual_around_predictor_runs(tmp_path):
    summary = _load("residual_around_predictor").main(
        ["--genes", "40", "--max-epochs", "5", "--mlp-epochs", "5", "--n-samples", "30", "--out", str(tmp_path)])
    assert (tmp_path / "intervals.png").stat().st_size > 10_000
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["n_genes"] == 40 and set(report["coverage"]) >= {"0.5", "0.8", "0.9", "0.95"}
    assert 0 <= summary["coverage"]["0.9"] <= 1
