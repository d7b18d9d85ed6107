"""`probgex power MODEL --contrast ... --n ... --out FOLDER` writes power.json, power.nc and power.png."""

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from typer.testing import CliRunner

from probgex.cli import app

runner = CliRunner()


def test_power_command_writes_json_netcdf_and_figure(glm_fit, tmp_path):
    model = glm_fit.save(tmp_path / "glm.npz")
    out = tmp_path / "power"
    res = runner.invoke(app, ["power", str(model), "--contrast", "group:b:a", "--n", "3,6", "--fdr", "0.1",
                              "--lfc", "1", "--de-fraction", "0.25", "--n-draws", "3", "--n-rep", "1",
                              "--depth", "600", "--out", str(out)])
    assert res.exit_code == 0, res.output
    s = json.loads((out / "power.json").read_text())
    assert [r["n_per_group"] for r in s["per_n"]] == [3, 6]
    for r in s["per_n"]:
        assert 0 <= r["power_lower"] <= r["power"] <= r["power_upper"] <= 1
        assert 0 <= r["realized_fdr"] <= 1
    assert s["settings"]["contrast"] == "group:b:a" and s["settings"]["fdr"] == 0.1
    ds = xr.open_dataset(out / "power.nc", engine="h5netcdf")
    assert ds.sizes["draw"] == 3 and list(ds["n"].values) == [3, 6]
    ds.close()
    assert (out / "power.png").read_bytes()[:4] == b"\x89PNG"


def test_power_command_bad_contrast_is_a_clear_error(glm_fit, tmp_path):
    model = glm_fit.save(tmp_path / "glm.npz")
    res = runner.invoke(app, ["power", str(model), "--contrast", "group-b-a", "--out", str(tmp_path / "p")])
    assert res.exit_code == 2 and "column:level:reference" in res.output
    res = runner.invoke(app, ["power", str(model), "--contrast", "group:zz:a", "--out", str(tmp_path / "p")])
    assert res.exit_code == 2 and "'zz'" in res.output


@pytest.mark.slow  # 10-14 s: the default suite measured 11:25 in .ci/run with 727 tests
def test_power_command_with_posterior_effects_and_the_pilot(glm_fit, tmp_path):
    """--effects/--reference-n/--min-abs-lfc reach the curve; --pilot adds the jackknife uncertainty of
    the pilot's dispersion level (recorded in the settings)."""
    model = glm_fit.save(tmp_path / "glm.npz")
    pilot = tmp_path / "pilot.h5ad"
    rng = np.random.default_rng(0)  # a 6-vs-6 pilot deep enough for its NB excess to dominate (mean 200)
    y = rng.poisson(rng.gamma(10.0, 20.0, (12, glm_fit.var_names.size)))  # the model's genes (checked)
    ad.AnnData(X=y.astype(np.float32), obs=pd.DataFrame({"group": np.repeat(["a", "b"], 6)},
                                                        index=[f"p{i}" for i in range(12)]),
               var=pd.DataFrame(index=list(glm_fit.var_names))).write_h5ad(pilot)
    out = tmp_path / "power"
    res = runner.invoke(app, ["power", str(model), "--contrast", "group:b:a", "--n", "3", "--fdr", "0.1",
                              "--n-draws", "3", "--n-rep", "1", "--depth", "600", "--effects", "posterior",
                              "--reference-n", "8", "--min-abs-lfc", "0.5,1", "--pilot", str(pilot),
                              "--out", str(out)])
    assert res.exit_code == 0, res.output
    s = json.loads((out / "power.json").read_text())
    st = s["settings"]
    assert st["reference_n"] == 8 and st["effects"] == "posterior" and st["dispersion_level_df"] > 0
    assert st["dispersion_level_se"] > 0
    assert set(s["per_n"][0]["power_by_min_abs_lfc"]) == {"0.5", "1"}
    res = runner.invoke(app, ["power", str(model), "--contrast", "group:b:a", "--effects", "posterior",
                              "--out", str(out)])
    assert res.exit_code == 2 and "reference_n" in res.output
