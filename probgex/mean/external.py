"""Stage 1 handed in from outside: a table of predictions keyed by observation name, or a callable.

    pg.mean.External(df, scale="counts")        # df: observations x genes, index = obs names
    pg.mean.External(my_model.predict, scale="log1p_cp10k", genes=gene_list)   # obs DataFrame -> (n, G)

A table must cover every observation the model will see (training and held-out); it is stored in the
model file. A callable cannot be stored: pass it again at `pg.load(path, mean=...)`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from probgex.errors import DataError, ModelFileError
from probgex.mean.base import SCALES, MeanPredictor, gene_positions, to_log_fraction


class External(MeanPredictor):
    """Predictions of E[x | c] (or normalised expression) from any outside model."""

    kind = "external"

    def __init__(self, predictions: pd.DataFrame | Callable, *, scale: str = "counts",
                 genes: Sequence[str] | None = None):
        if scale not in SCALES:
            raise DataError(f"unknown prediction scale {scale!r}; use one of {', '.join(SCALES)}")
        self.scale = scale
        if isinstance(predictions, pd.DataFrame):
            if not predictions.index.is_unique or not predictions.columns.is_unique:
                raise DataError("the prediction table needs unique observation names (index) and unique "
                                "gene names (columns)")
            self.table, self.fn = predictions, None
            self.genes = pd.Index(predictions.columns.astype(str))
        elif callable(predictions):
            self.table, self.fn = None, predictions
            self.genes = None if genes is None else pd.Index(np.asarray(genes, dtype=str))
        else:
            raise DataError(f"External needs a DataFrame (observations x genes) or a callable from a metadata "
                            f"DataFrame to predictions; got {type(predictions).__name__}. For a bare array, "
                            "use External.from_array(array, obs_names, genes).")

    @classmethod
    def from_array(cls, values, obs_names: Sequence[str], genes: Sequence[str], *, scale: str = "counts"
                   ) -> External:
        """An (observations x genes) array with its row and column names."""
        values = np.asarray(values)
        if values.shape != (len(obs_names), len(genes)):
            raise DataError(f"predictions of shape {values.shape} do not match {len(obs_names)} observations "
                            f"x {len(genes)} genes; pass one row per observation and one column per gene")
        return cls(pd.DataFrame(values, index=pd.Index(obs_names, dtype=str), columns=pd.Index(genes, dtype=str)),
                   scale=scale)

    def log_fraction(self, obs: pd.DataFrame, genes: Sequence[str], library_size=None) -> np.ndarray:
        if self.table is not None:
            names = pd.Index(obs.index.astype(str))
            pos = pd.Index(self.table.index.astype(str)).get_indexer(names)
            if (pos < 0).any():
                missing = list(names[pos < 0][:5])
                raise DataError(f"the stage-1 prediction table has no row for {int((pos < 0).sum())} "
                                f"observations (e.g. {missing}); predict every observation you fit, predict "
                                "or check, keyed by obs name")
            values = self.table.to_numpy()[pos]
            cols = self.genes
        else:
            out = self.fn(obs)
            if isinstance(out, pd.DataFrame):
                cols, values = pd.Index(out.columns.astype(str)), out.to_numpy()
            else:
                values = np.asarray(out)
                cols = self.genes if self.genes is not None else pd.Index(np.asarray(genes, dtype=str))
                if values.ndim != 2 or values.shape[1] != len(cols):
                    raise DataError(f"the stage-1 callable returned shape {values.shape}; expected "
                                    f"({len(obs)}, {len(cols)}) (one column per gene; pass genes=... when its "
                                    "columns are not the model's genes in order)")
            if values.shape[0] != len(obs):
                raise DataError(f"the stage-1 callable returned {values.shape[0]} rows for {len(obs)} "
                                "observations")
        values = values[:, gene_positions(cols, genes, "stage-1 predictions")]
        return to_log_fraction(values, self.scale, library_size, "stage-1 predictions")

    def state(self) -> tuple[dict, dict[str, np.ndarray]]:
        if self.table is None:
            return {"kind": self.kind, "scale": self.scale, "callable": True}, {}
        return ({"kind": self.kind, "scale": self.scale, "callable": False},
                {"values": self.table.to_numpy(np.float64), "obs_names": np.asarray(self.table.index, dtype=str),
                 "genes": np.asarray(self.table.columns, dtype=str)})

    @classmethod
    def from_state(cls, header: dict, arrays: dict[str, np.ndarray], fn: Callable | None = None) -> External:
        if header.get("callable"):
            if fn is None:
                raise ModelFileError("this model's stage-1 predictions came from a Python callable, which a "
                                     "model file cannot hold; load it with pg.load(path, mean=the_callable)")
            return cls(fn, scale=header["scale"])
        return cls.from_array(arrays["values"], arrays["obs_names"], arrays["genes"], scale=header["scale"])
