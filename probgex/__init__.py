"""probgex: probabilistic generative models of gene-expression counts from metadata.

    import probgex as pg
    model = pg.Model("~ cell_type + stim", likelihood="nb", latent=pg.latent.Gaussian(dim=10))
    fit = model.fit(adata, seed=0)
    pred = fit.predict(new_obs, n_samples=500)
    fit.save("model.npz"); fit = pg.load("model.npz")

The public names are re-exported lazily (PEP 562): `import probgex`, `probgex.spec`, `probgex.data` and
the shell's module load no JAX, NumPyro, Flax, diffrax, ArviZ or matplotlib; the first use of a name that
needs them (`pg.Model`, `pg.power`, ...) imports its module.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it; a subpackage / module maps to itself
_EXPORTS: dict[str, str] = {
    "CountData": "probgex.data", "DesignEncoding": "probgex.data", "DesignWarning": "probgex.data",
    "EmptyWarning": "probgex.data", "from_anndata": "probgex.data",
    "DataError": "probgex.errors", "DispersionPriorWarning": "probgex.errors", "ExtrapolationWarning": "probgex.errors", "IncompleteFitWarning": "probgex.errors",
    "ModelFileError": "probgex.errors", "OutputError": "probgex.errors", "ProbgexError": "probgex.errors",
    "SpecError": "probgex.errors",
    "Fit": "probgex.fit", "Model": "probgex.fit", "load": "probgex.fit",
    "ModelSpec": "probgex.spec",
    "datasets": "probgex.datasets", "diagnostics": "probgex.diagnostics", "latent": "probgex.latent",
    "mean": "probgex.mean", "power": "probgex.power",
    "explain": "probgex.diagnostics.variance",  # issue 16: variance explained per term
    "annotate": "probgex.annotate",  # issue 17: results into an AnnData (the module: fit.annotate(adata))
    "sample": "probgex.synthetic",  # issue 16: synthetic profiles for augmentation
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'probgex' has no attribute {name!r}")
    mod = importlib.import_module(module)
    value = mod if module == f"probgex.{name}" else getattr(mod, name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # static analysers and IDEs see the eager form
    from probgex import datasets, diagnostics, latent, mean, power
    from probgex.data import CountData, DesignEncoding, DesignWarning, EmptyWarning, from_anndata
    from probgex.errors import (DataError, DispersionPriorWarning, ExtrapolationWarning, IncompleteFitWarning, ModelFileError, OutputError,
                                ProbgexError, SpecError)
    from probgex.fit import Fit, Model, load
    from probgex.diagnostics.variance import explain
    from probgex import annotate
    from probgex.spec import ModelSpec
    from probgex.synthetic import sample
