"""Stage 1 from a fitted probgex GLM: log m_g(c) = X(c) beta_g at the posterior mean of beta."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from probgex.data import DesignEncoding
from probgex.errors import SpecError
from probgex.mean.base import MeanPredictor, gene_positions


class GLMMean(MeanPredictor):
    """The GLM story's point prediction (posterior mean coefficients; log link, library offset)."""

    kind = "glm"

    def __init__(self, encoding: DesignEncoding, beta: np.ndarray, var_names: Sequence[str]):
        self.encoding = encoding
        self.beta = np.asarray(beta, np.float32)  # (P, G)
        self.var_names = pd.Index(np.asarray(var_names, dtype=str))
        if self.beta.shape != (len(encoding.columns), len(self.var_names)):
            raise ValueError(f"beta has shape {self.beta.shape}; expected (design columns, genes) = "
                             f"({len(encoding.columns)}, {len(self.var_names)})")

    @classmethod
    def from_fit(cls, fit) -> GLMMean:
        """Wrap a fitted GLM (`pg.Model(formula, likelihood="nb").fit(adata)`)."""
        if fit.spec.story != "glm":
            raise SpecError(f"GLMMean needs a fitted GLM (latent=None); got a {fit.spec.story} fit")
        return cls(fit.encoding, fit.coefficients()["mean"].values, fit.var_names)

    def log_fraction(self, obs: pd.DataFrame, genes: Sequence[str], library_size=None) -> np.ndarray:
        design = self.encoding.transform(obs)
        return (design @ self.beta[:, gene_positions(self.var_names, genes, "stage-1 GLM")]).astype(np.float32)

    def state(self) -> tuple[dict, dict[str, np.ndarray]]:
        return ({"kind": self.kind, "encoding": self.encoding.to_dict()},
                {"beta": self.beta, "var_names": np.asarray(self.var_names, dtype=str)})

    @classmethod
    def from_state(cls, header: dict, arrays: dict[str, np.ndarray]) -> GLMMean:
        return cls(DesignEncoding.from_dict(header["encoding"]), arrays["beta"], arrays["var_names"])
