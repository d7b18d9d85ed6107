"""Stage 1 as a point predictor trained the way expression foundation models are: a Flax MLP from the
design row to log1p(counts per S) of every gene, by squared error (optax Adam, minibatches, early
stopping on held-out rows). S is 1e4 (counts per 10k, the single-cell convention) or the median training
library size when that is larger (bulk: at 1e7 reads a gene with a few reads has log1p(cp10k) ~ 1e-3, below
what a squared-error fit resolves, so its predictions would hit 0 and the expected fraction the floor).
Its expected fraction is taken as expm1(prediction) / S -- biased low by Jensen's inequality, as any
log-scale predictor is; correcting such biases is stage 2's job."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
from flax import nnx

from probgex import rng as streams
from probgex.data import CountData, DesignEncoding
from probgex.inference import checkpoint
from probgex.mean.base import CP, MeanPredictor, gene_positions, to_log_fraction
from probgex.models.nets import MLP


DEVICE_BUDGET = 2**30  # bytes of dense targets kept on the device; above, minibatches are read from the host


def log1p_normalized(data: CountData, rows: np.ndarray, scale: float = CP) -> np.ndarray:
    """The MLP's target: log1p(x / library size * scale) of `rows`, float32."""
    return np.log1p(data.rows(rows) / data.library_size[rows, None] * scale).astype(np.float32)


class MLPMean(MeanPredictor):
    """A Flax MLP point predictor of log1p(counts per `scale`) from the design."""

    kind = "mlp"

    def __init__(self, encoding: DesignEncoding, var_names: Sequence[str], hidden: Sequence[int] = (128,),
                 params: dict | None = None, *, seed=0, scale: float = CP):
        self.encoding, self.hidden = encoding, tuple(int(h) for h in hidden)
        self.scale = float(scale)
        self.var_names = pd.Index(np.asarray(var_names, dtype=str))
        net = MLP(len(encoding.columns), self.hidden, (len(self.var_names),),
                  rngs=nnx.Rngs(streams.stream(seed, "networks")))
        self._graph, state = nnx.split(net)
        self.params = nnx.to_pure_dict(state)
        if params is not None:
            self.params = checkpoint.unflatten_params(self.params, params) if _flat(params) else params
        self.history: list[tuple[float, float]] = []  # (train MSE, held-out MSE) per epoch

    def predict_log1p(self, design: np.ndarray) -> np.ndarray:
        """The point prediction of log1p(counts per `scale`), (n, G)."""
        return np.asarray(_apply(self._graph, self.params, jnp.asarray(design, jnp.float32)))

    def log_fraction(self, obs: pd.DataFrame, genes: Sequence[str], library_size=None) -> np.ndarray:
        pred = self.predict_log1p(self.encoding.transform(obs))
        pred = pred[:, gene_positions(self.var_names, genes, "stage-1 MLP")]
        return to_log_fraction(np.expm1(np.maximum(pred, 0.0)) / self.scale, "fraction", None, "stage-1 MLP")

    @classmethod
    def train(cls, data: CountData, *, hidden: Sequence[int] = (128,), seed=0, holdout: float = 0.1,
              max_epochs: int = 300, patience: int = 20, batch_size: int = 128, learning_rate: float = 1e-3,
              progress: bool = True) -> MLPMean:
        """Fit by squared error on log1p(counts per 10k) of `data` (a CountData: `pg.from_anndata`).

        A fraction `holdout` of the rows is held out for early stopping; the best epoch's weights are kept.
        `seed`: an int or a JAX key (`probgex.rng`).
        """
        from probgex.inference.loop import EarlyStopping, reporter

        model = cls(data.encoding, data.var_names, hidden, seed=seed,
                    scale=max(CP, float(np.median(data.library_size))))
        order = streams.host_rng(seed, "holdout").permutation(data.n_obs)
        rng = streams.host_rng(seed, "shuffle")
        k = int(round(holdout * data.n_obs)) if data.n_obs > 10 else 0
        held, train = order[:k], order[k:]
        # the targets on the device when they fit its budget (as the SVI fit keeps its counts), else each
        # minibatch's read and normalized on the host (counts streamed from disk, large data)
        on_device = data.n_obs * data.n_genes * 4 <= DEVICE_BUDGET and not data.streamed
        design = np.asarray(data.design, np.float32)
        if on_device:
            y = jnp.asarray(log1p_normalized(data, np.arange(data.n_obs), model.scale))
            d = jnp.asarray(design)

            def rows(idx):
                return d[idx], y[idx]
        else:
            def rows(idx):
                return design[idx], log1p_normalized(data, np.asarray(idx), model.scale)
        opt = optax.adam(learning_rate)
        graph = model._graph

        def loss_fn(params, d_b, y_b, mask):
            err = (_apply(graph, params, d_b) - y_b) ** 2
            return jnp.sum(err.mean(-1) * mask) / jnp.maximum(mask.sum(), 1.0)

        @jax.jit
        def step(params, opt_state, d_b, y_b, mask):
            loss, grads = jax.value_and_grad(loss_fn)(params, d_b, y_b, mask)
            updates, opt_state = opt.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        batch_loss = jax.jit(loss_fn)

        def held_loss(params):
            """The mean squared error over the held-out rows (in blocks when they are read from the host)."""
            if on_device:
                return float(batch_loss(params, *rows(held), np.ones(len(held), np.float32)))
            total = 0.0
            for s in range(0, len(held), 4096):
                r = held[s : s + 4096]
                total += float(batch_loss(params, *rows(r), np.ones(len(r), np.float32))) * len(r)
            return total / len(held)

        params = jax.tree.map(jnp.asarray, model.params)
        # start from the per-gene mean target: the output bias need not walk to log1p(cp10k) ~ 9 from 0
        if on_device:
            params["heads"][0]["bias"] = y[train].mean(0)
        else:
            total = np.zeros(data.n_genes)
            for s in range(0, len(train), 4096):
                total += rows(np.sort(train[s : s + 4096]))[1].sum(0, dtype=np.float64)
            params["heads"][0]["bias"] = jnp.asarray((total / len(train)).astype(np.float32))
        opt_state = opt.init(params)
        bs = min(batch_size, len(train))
        best_params, stopper = params, EarlyStopping(patience, min_delta=1e-6)
        with reporter(progress, "stage-1 MLP", max_epochs) as bar:
            for epoch in range(max_epochs):
                perm = rng.permutation(train)
                losses = []
                for start in range(0, len(perm), bs):
                    idx = np.resize(perm[start:start + bs], bs)  # fixed shape: pad by wrapping, masked
                    mask = (np.arange(bs) < min(bs, len(perm) - start)).astype(np.float32)
                    params, opt_state, loss = step(params, opt_state, *rows(idx), mask)
                    losses.append(float(loss))
                h = held_loss(params) if len(held) else np.mean(losses)
                model.history.append((float(np.mean(losses)), h))
                verdict = stopper.observe(h)
                if verdict == "improved":
                    best_params = params
                bar.update(epoch + 1, f"held-out MSE {h:.4f}")
                if verdict == "stop":
                    break
        model.params = jax.tree.map(np.asarray, best_params)
        return model

    def state(self) -> tuple[dict, dict[str, np.ndarray]]:
        arrays = checkpoint.flatten_params(self.params)
        arrays["var_names"] = np.asarray(self.var_names, dtype=str)
        return {"kind": self.kind, "encoding": self.encoding.to_dict(), "hidden": list(self.hidden),
                "scale": self.scale}, arrays

    @classmethod
    def from_state(cls, header: dict, arrays: dict[str, np.ndarray]) -> MLPMean:
        arrays = dict(arrays)
        var_names = arrays.pop("var_names")
        return cls(DesignEncoding.from_dict(header["encoding"]), var_names, header["hidden"], arrays,
                   scale=float(header.get("scale", CP)))


def _flat(params: dict) -> bool:
    return all(isinstance(k, str) and k.startswith("param") for k in params)


def _apply(graph, params, design):
    state = nnx.State(params) if not isinstance(params, nnx.State) else params
    net = nnx.merge(graph, state)
    return net(design)[0]
