"""examples/latent_diffusion_pbmc.py runs end to end with tiny settings (17 s: the slow step; the learned
prior's fit, prediction and model file are tested in test_learned_prior_fit.py)."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

import probgex as pg

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "latent_diffusion_pbmc.py"


@pytest.mark.slow
def test_latent_diffusion_example_runs(tmp_path):
    spec = importlib.util.spec_from_file_location("latent_diffusion_pbmc", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = module.main(["--out", str(tmp_path), "--epochs", "2", "--prior-steps", "100", "--dim", "4", "--quiet"])
    assert set(out) == {"diffusion", "gaussian"} and all(np.isfinite(v) and v > 0 for v in out.values())
    fit = pg.load(tmp_path / "model.npz")
    assert fit.spec.latent.kind == "diffusion" and "learned_prior" in fit.params
    assert (tmp_path / "heldout_predictions.nc").is_file()
