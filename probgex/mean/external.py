"""Stage 1 handed in from outside: a table of predictions keyed by observation name, or a callable.

    pg.mean.External(df, scale="counts")        # df: observations x genes, index = obs names
    pg.mean.External(groups, scale="fraction", key=["cell_type", "stim"])   # one row per metadata combination
    pg.mean.External(my_model.predict, scale="log1p_cp10k", genes=gene_list)   # obs DataFrame -> (n, G)

A table keyed by observation name must cover every observation the model will see (training and
held-out), and so cannot predict new metadata: `Fit.predict` on other observations is refused with the
two ways that can (a table keyed by metadata, or a callable). A table keyed by metadata (`key`: obs
columns; the table's index holds their values, a MultiIndex for several, or the table has them as
columns) predicts any observation whose combination of values it lists. Tables are stored in the model
file. A callable cannot be stored: pass it again at `pg.load(path, mean=...)`.
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
                 genes: Sequence[str] | None = None, key: str | Sequence[str] | None = None):
        if scale not in SCALES:
            raise DataError(f"unknown prediction scale {scale!r}; use one of {', '.join(SCALES)}")
        self.scale = scale
        self.key = None
        if key is not None:
            if not isinstance(predictions, pd.DataFrame):
                raise DataError("key= names the metadata columns that index a prediction table; a callable "
                                "receives the metadata itself: drop key")
            predictions = _keyed(predictions, key, scale)
            self.key = list(predictions.index.names)
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
        if self.table is not None and self.key is not None:
            missing = [k for k in self.key if k not in obs.columns]
            if missing:
                raise DataError(f"the stage-1 prediction table is keyed by the metadata columns {self.key}; the "
                                f"metadata lacks {missing}")
            names = _as_str_index(obs[self.key])
            pos = _as_str_index(self.table.index.to_frame(index=False)).get_indexer(names)
            if (pos < 0).any():
                combos = list(dict.fromkeys(names[pos < 0]))
                raise DataError(f"the stage-1 prediction table (keyed by {self.key}) has no row for "
                                f"{int((pos < 0).sum())} observations, with {len(combos)} combinations of "
                                f"{self.key} it does not list (e.g. {combos[:3]}); add rows for them")
            values = self.table.to_numpy()[pos]
            cols = self.genes
        elif self.table is not None:
            names = pd.Index(obs.index.astype(str))
            pos = pd.Index(self.table.index.astype(str)).get_indexer(names)
            if (pos < 0).any():
                missing = list(names[pos < 0][:5])
                raise DataError(f"the stage-1 prediction table has no row for {int((pos < 0).sum())} "
                                f"observations (e.g. {missing}); it is keyed by obs name, so it covers only "
                                "the observations it lists (fit, predict and check those). To predict new "
                                "metadata, key the table by metadata columns (pg.mean.External(table, "
                                "key=['cell_type', ...]); shell: --mean-key) or pass a callable from metadata "
                                "to predictions (pg.mean.External(fn, scale=...))")
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
        if self.key is not None:  # the key values as strings, one column per key
            keys = self.table.index.to_frame(index=False).astype(str).to_numpy()
            return ({"kind": self.kind, "scale": self.scale, "callable": False, "key": self.key},
                    {"values": self.table.to_numpy(np.float64), "key_values": np.asarray(keys, dtype=str),
                     "genes": np.asarray(self.table.columns, dtype=str)})
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
        if header.get("key"):
            key = list(header["key"])
            index = pd.MultiIndex.from_frame(pd.DataFrame(arrays["key_values"], columns=key))
            table = pd.DataFrame(arrays["values"], index=index, columns=pd.Index(arrays["genes"], dtype=str))
            return cls(table, scale=header["scale"], key=key)
        return cls.from_array(arrays["values"], arrays["obs_names"], arrays["genes"], scale=header["scale"])


def _as_str_index(frame: pd.DataFrame) -> pd.Index:
    """Rows of a frame of key values as an Index of string tuples (1.0 and "1.0" match; so do a
    category and its label)."""
    return pd.Index(list(zip(*(frame[c].astype(str).to_numpy() for c in frame.columns), strict=True)),
                    tupleize_cols=False)


def _keyed(table: pd.DataFrame, key: str | Sequence[str], scale: str) -> pd.DataFrame:
    """The table indexed by the metadata columns `key`: taken from its columns if there, else its index
    must have one level per key column; each combination once."""
    key = [key] if isinstance(key, str) else [str(k) for k in key]
    if not key:
        raise DataError("key must name at least one metadata column")
    if scale == "counts":
        raise DataError("a table keyed by metadata predicts all observations of a combination alike, which "
                        "expected counts cannot do (they scale with each observation's depth): give it as "
                        "scale='fraction', 'log1p_cp10k' or 'log_fraction'")
    if all(k in table.columns for k in key):
        table = table.set_index(key)
    elif (table.index.nlevels == len(key) and not isinstance(table.index, pd.RangeIndex)
          and all(n is None or n == k for n, k in zip(table.index.names, key, strict=True))):
        table = table.copy()
        table.index = table.index.set_names(key)
    else:
        raise DataError(f"key {key}: the table has neither these columns nor an index of their values (its "
                        f"index: {list(table.index.names)}, {table.index.nlevels} level(s)); put the metadata values "
                        "in the index or in columns of those names")
    index = pd.MultiIndex.from_frame(table.index.to_frame(index=False).astype(str))
    if index.duplicated().any():
        dup = list(index[index.duplicated()][:3])
        raise DataError(f"the prediction table lists some combinations of {key} more than once (e.g. {dup}); "
                        "give one row per combination")
    return pd.DataFrame(table.to_numpy(), index=index, columns=table.columns)
