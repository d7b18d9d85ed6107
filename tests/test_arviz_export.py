"""The ArviZ export works with every ArviZ function the README names, as exported, and the README's
example gene is in the example data."""

import re
import warnings
from pathlib import Path

import numpy as np
import pytest

from probgex.diagnostics.arviz import to_datatree, variable_names
from probgex.errors import DataError

README = (Path(__file__).parents[1] / "README.md").read_text()


def test_readme_names_arviz_functions_and_an_example_gene_in_the_example_data():
    import probgex as pg

    assert {"loo_pit", "plot_ppc_pit", "plot_ppc_rootogram"} <= set(re.findall(r"arviz\.(\w+)", README))
    genes = re.findall(r"to_datatree\([^)]*genes=\[([^\]]*)\]", README)
    assert genes, "the README shows a to_datatree call with genes=[...]"
    names = [g.strip().strip("'\"") for g in genes[0].split(",")]
    assert set(names) <= set(pg.datasets.schurch_yeast().var_names)


def test_every_arviz_function_the_readme_names_takes_the_export_as_it_is(glm_fit, small_adata):
    import arviz as az
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    genes = ["gene0", "gene3"]
    dt = to_datatree(glm_fit, small_adata, genes=genes, n_samples=40)
    for name in sorted(set(re.findall(r"arviz\.(\w+)", README))):
        with warnings.catch_warnings():  # arviz_stats' Pareto-smoothed PIT divides by a zero tail scale
            # on some of these 40-draw genes (a RuntimeWarning inside arviz, not a problem of the export)
            warnings.simplefilter("ignore", RuntimeWarning)
            out = getattr(az, name)(dt)
        if name.startswith("plot_"):  # one panel per gene
            assert set(out.viz["plot"].data_vars) == set(genes), name
        else:  # loo_pit: one PIT value per observation and gene, in [0, 1]
            assert all(out[g].shape == (small_adata.n_obs,) for g in genes)
            assert all(float(out[g].min()) >= 0 and float(out[g].max()) <= 1 + 1e-9 for g in genes)
    plt.close("all")


def test_gene_names_with_a_slash_become_valid_variable_names():
    assert variable_names(["HLA-A/B", "g1"]) == ["HLA-A_B", "g1"]
    with pytest.raises(DataError, match="same name"):
        variable_names(["a/b", "a_b"])
    assert np.all([isinstance(v, str) for v in variable_names([1, 2])])


def test_numpyro_is_whole_when_arviz_was_imported_first():
    """arviz registers numpyro as a lazy_loader stub; a later import of numpyro's distributions then left
    `numpyro.distributions.distribution` unbound and every cVAE fit failed in `numpyro.factor` (45 tests of
    the suite, depending on the test order). A fresh interpreter: arviz first, then probgex's models."""
    import subprocess
    import sys

    code = ("import arviz, numpy as np, numpyro.distributions as d; ok = hasattr(d, 'distribution'); "
            "from probgex.models.story import build_story; from probgex.models.dims import Dims; "
            "import probgex as pg; from probgex.spec import ModelSpec; "
            "build_story(ModelSpec('~ 1', latent=pg.latent.Gaussian(dim=2)), Dims(1, 3, 1, 0, 7.0, 1.0, 0), np.zeros(3)); "
            "assert hasattr(d, 'distribution') and hasattr(d, 'continuous'), ok")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
