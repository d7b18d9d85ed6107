"""probgex: probabilistic generative models of gene-expression counts from metadata.

    import probgex as pg
    model = pg.Model("~ cell_type + stim", likelihood="nb", latent=pg.latent.Gaussian(dim=10))
    fit = model.fit(adata, seed=0)
    pred = fit.predict(new_obs, n_samples=500)
    fit.save("model.npz"); fit = pg.load("model.npz")
"""

from probgex import datasets, diagnostics, latent, mean, power
from probgex.data import CountData, DesignEncoding, EmptyWarning, from_anndata
from probgex.errors import DataError, IncompleteFitWarning, ModelFileError, ProbgexError, SpecError
from probgex.fit import Fit, Model, load
from probgex.spec import ModelSpec

__version__ = "0.1.0"

__all__ = [
    "CountData", "DataError", "DesignEncoding", "EmptyWarning", "Fit", "IncompleteFitWarning", "Model",
    "ModelFileError",
    "ModelSpec", "ProbgexError", "SpecError", "datasets", "diagnostics", "from_anndata", "latent", "load", "mean",
    "power",
]

from probgex.diagnostics.variance import explain  # noqa: E402  (issue 16: variance explained per term)
__all__ += ["explain"]
