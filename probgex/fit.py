"""`Model` (a spec you can fit) and `Fit` (a fitted model: predict, evaluate, save)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import replace
from functools import cached_property
from pathlib import Path

import jax
import numpy as np
import pandas as pd
import xarray as xr
from scipy.stats import norm

from probgex.choices import LEARNED_PRIORS
from probgex.data import CountData, DesignEncoding, from_anndata, group_codes
from probgex import _memory, _resume, library
from probgex import mean as stage1_means
from probgex.errors import DataError, IncompleteFitWarning, ModelFileError, OutputError, SpecError
from probgex import rng as streams
from probgex.inference import checkpoint
from probgex.inference.minibatch import make_batch
from probgex.inference.prior_stage import fit_prior_stage
from probgex._checks import check_fit_options, check_levels, check_n_samples  # noqa: F401 (public here)
from probgex.inference.predictive import Draws, deciles, empirical_intervals, pit_coverage
from probgex.inference.resume import Snapshot
from probgex.inference.svi import History, Resume, TrainConfig, fit_svi, make_svi
from probgex.models.families import family
from probgex.models.families.base import DISPERSION
from probgex.models.glm import scale_tril
from probgex.models.story import Dims, build_story
from probgex.prior.train import PriorHistory
from probgex.spec import ModelSpec

LEVELS = (0.5, 0.8, 0.9, 0.95)
SMALL_N = 50  # below this many observations the default GLM fit holds none out for early stopping
BLOCK = 256  # most rows per prediction block; fixed per (draws, genes), so prediction compiles once
THETA_STEP_SCALE = 20.0  # Adam step multiplier of the cVAE / residual log-concentrations: 0.02 at lr 1e-3, the GLM's rate
STAGE1 = "stage1$"  # prefix of the stage-1 predictor's arrays in a model file
BLOCK_ENTRIES = 2**24  # draws x rows x genes held at once on the host in prediction


def block_size(n_draws: int, n_genes: int) -> int:
    """Rows per prediction block: a power of two in [8, BLOCK] keeping draws x rows x genes bounded."""
    rows = BLOCK_ENTRIES // max(1, n_draws * n_genes)
    return int(min(BLOCK, max(8, 2 ** int(np.log2(max(rows, 1))))))


class Model:
    """A declared model: `Model("~ cell_type + stim", likelihood="nb", latent=Gaussian(dim=10))`.

    `mean` makes it the residual story around a stage-1 point predictor: "glm" or "mlp" (trained on the
    training observations first), or a predictor of your own: a `pg.mean.External` (a table of
    predictions keyed by obs name, or a callable), a DataFrame of expected counts (obs x genes), or a
    `pg.mean.GLMMean` / `pg.mean.MLPMean` already trained.
    """

    def __init__(self, formula: str, likelihood: str = "nb", latent=None, *, mean=None, **spec_options):
        self.stage1 = None
        if mean is not None and not isinstance(mean, str):
            self.stage1 = _as_predictor(mean)
            mean = self.stage1.kind
        self.spec = ModelSpec.create(formula, likelihood, latent, mean=mean, **spec_options)

    @classmethod
    def from_spec(cls, spec: ModelSpec, stage1=None) -> Model:
        m = cls.__new__(cls)
        m.spec, m.stage1 = spec, None if stage1 is None else _as_predictor(stage1)
        if m.stage1 is not None and spec.mean != m.stage1.kind:
            raise SpecError(f"the spec says mean={spec.mean!r} but a {m.stage1.kind!r} predictor was given")
        return m

    def __repr__(self) -> str:
        return f"Model({self.spec!r})"

    def fit(self, adata, *, seed=0, holdout: float | None = None, heldout_obs: Sequence[str] | None = None,
            max_epochs: int | None = None, batch_size: int = 128, learning_rate: float | None = None,
            patience: int | None = None, lr_reductions: int | None = None,
            checkpoint_path: str | Path | None = None, checkpoint_every: int = 10,
            progress: bool = True, empty: str = "warn", resume: str | Path | None = None) -> Fit:
        """Fit by SVI on the raw counts of `adata` (X or the spec's layer) with metadata in `adata.obs`.

        A fraction `holdout` of the observations (or those named in `heldout_obs`) is held out for
        early stopping (after `patience` epochs without improvement; before that, the learning rate is
        cut `lr_reductions` times after patience // 2 stale epochs). By default (None) that is 10%, except
        for a GLM with fewer than SMALL_N observations, which holds none out: in a bulk design of a few
        samples a held-out sample would cost a residual degree of freedom (6 samples and 5 coefficients
        left the dispersions none); without a held-out split the fit runs `max_epochs` (~3000 steps).
        `spec.library == "auto"` is resolved here (`probgex.library.choose`); the fit's spec says which.
        `seed`: an int or a JAX key (`probgex.rng`); the same seed gives the same result (a key is first
        reduced to an int seed, recorded in the model). With `checkpoint_path`, the best parameters so
        far are written there every `checkpoint_every` epochs (atomically: an interrupted fit leaves the
        last checkpoint valid). A file already at `checkpoint_path` (an earlier model) is kept until the
        fit ends: the checkpoints go beside it (`checkpoint_target`: `name.partial.npz`) and the finished
        model replaces it in one step.
        With a learned latent prior (Diffusion / Flow), the VAE stage ends with a checkpoint of its best
        parameters; the prior stage then trains the prior and writes the complete model. A checkpoint of
        the VAE stage loads as the VAE with its Gaussian prior (`Fit.learned_prior_status` is
        "not trained", with an IncompleteFitWarning); `Fit.train_prior(adata)` completes it. A periodic
        checkpoint (written before the SVI loop finished) records that (`Fit.finished` False) and warns
        when loaded.

        `resume`: a periodic checkpoint of an interrupted fit to continue (its optimizer state, epoch,
        early-stopping counters and learning-rate cuts; the random streams are functions of the seed and
        the epoch), ending with the same parameters as the uninterrupted fit. Pass the same model, data
        and options (seed, holdout, max_epochs, ...; `checkpoint_every` and `progress` may differ): a
        mismatch is refused (SpecError / DataError) before any fitting. Without `checkpoint_path`, the
        checkpoints continue in the `resume` file, which the finished model finally replaces. A checkpoint
        holding a finished fit is returned as it is, with a warning saying so. With a learned prior only
        the VAE stage resumes: from a VAE-stage checkpoint (unfinished, or finished before the prior
        stage) the VAE stage is completed and the prior stage then runs from its start.
        """
        spec = self.spec
        check_fit_options(max_epochs=max_epochs, batch_size=batch_size, patience=patience,
                          checkpoint_every=checkpoint_every, learning_rate=learning_rate, holdout=holdout)
        seed = streams.seed_int(seed)
        previous = None
        if resume is not None:
            resume = Path(resume)
            previous = _resume.open_checkpoint(resume, spec, seed, self.stage1)
            checkpoint_path = resume if checkpoint_path is None else checkpoint_path
        target = checkpoint_target(checkpoint_path, resume)
        data = from_anndata(adata, spec.formula, layer=spec.layer, likelihood=spec.likelihood,
                            empty=empty, group_key=spec.dispersion_key)
        if previous is not None:
            _resume.check_data(resume, previous, data)
        _memory.require(_memory.fit_bytes(spec, data.n_genes, data.n_design, min(batch_size, data.n_obs)),
                        f"a {spec.story} with a {getattr(spec.latent, 'dim', 0)}-dimensional latent on {data.n_genes} "
                        f"genes (batch {batch_size})", "lower the latent dimension (--latent-dim / latent=...(dim=)), "
                        "the network widths or the batch size")
        glm = spec.latent is None  # the GLM story, plain or around a stage-1 offset
        if holdout is None:  # a small GLM keeps every observation; networks keep their early stopping
            holdout = 0.0 if glm and data.n_obs < SMALL_N else 0.1
        train_idx, heldout_idx = _split(data, holdout, heldout_obs, seed)
        if spec.library == "auto":
            spec = replace(spec, library=library.choose(data, train_idx))
        config = _train_config(glm, len(train_idx), batch_size=batch_size, max_epochs=max_epochs,
                               patience=patience, learning_rate=learning_rate, lr_reductions=lr_reductions,
                               checkpoint_every=checkpoint_every, progress=progress)
        if previous is not None:
            _resume.check_spec(resume, previous.spec, spec)
            _resume.check_options(resume, previous, config, np.asarray(data.obs.index[heldout_idx]))
            if _resume.done(previous):
                warnings.warn(f"{resume} holds a finished fit (best epoch {previous.history.best_epoch} of "
                              f"{len(previous.history.train)}): nothing to resume, returning it", UserWarning,
                              stacklevel=2)
                if target == resume and target != Path(checkpoint_path):  # finished, but not yet swapped in
                    os.replace(target, checkpoint_path)
                return previous
        library_ref = None
        if spec.library == "size_factors":  # median-of-ratios library sizes against the training samples
            library_ref = library.reference(data, train_idx)
            data = replace(data, library_size=library.sizes(data, library_ref))
        stage1 = None
        if spec.mean is not None:
            stage1 = self._stage1(adata, data, train_idx, seed, progress)
            data = replace(data, offset=stage1.log_fraction(data.obs, data.var_names, data.library_size))
        log_mean, beta0, lib = _summaries(data, train_idx)
        intercept = data.encoding.columns.index("Intercept") if "Intercept" in data.encoding.columns else None
        dims = Dims(n_design=data.n_design, n_genes=data.n_genes,
                    n_groups=1 if data.group_levels is None else len(data.group_levels),
                    intercept=intercept, lib_loc=float(lib.mean()), lib_scale=float(max(lib.std(), 1e-3)),
                    seed=seed)
        if previous is not None and (previous.dims != dims or not np.array_equal(previous.log_mean, log_mean)):
            raise DataError(f"cannot resume from {resume}: the library sizes or counts of the training observations "
                            "differ from those the fit ran on; pass the data the interrupted fit used")
        # the NB mean-dispersion trend placed before SVI, for a family whose counts it describes
        trend = _trend_init(data, train_idx, log_mean, seed) if glm and family(spec.likelihood).nb_trend else None
        # the Laplace start at the trend's dispersions: at a flat 0.1 the guide started (and, Adam
        # shrinking scales slowly, stayed) too wide where dispersions are small
        alpha0 = 0.1 if trend is None else trend[0] + trend[1] * np.exp(-log_mean.astype(np.float64))
        tril = _laplace_tril(data, train_idx, beta0, spec, intercept, alpha=alpha0) if glm else None
        story = build_story(spec, dims, log_mean, beta0, tril, trend=trend, fixed_trend=True)

        def make(params, history, prior_history=None, finished=True):
            return Fit(spec, data.encoding, data.var_names, dims, log_mean, params, history,
                       data.group_levels, np.asarray(data.obs.index[heldout_idx]), stage1, library_ref,
                       prior_history, finished=finished)

        save = None
        if target is not None:
            context, context_arrays = _resume.fingerprint(data)
            context = {"data": context, "options": _resume.options(config)}

            def save(params, history, finished, snapshot=None):
                fit = make(params, history, finished=finished)
                if snapshot is not None:  # what resuming from this checkpoint needs
                    fit.snapshot = replace(snapshot, context=context, context_arrays=context_arrays)
                fit.save(target)
        if previous is not None and previous.snapshot is None:  # a finished VAE stage: the prior stage is left
            params, history = previous.params, previous.history
        else:  # the VAE stage (the whole fit without a learned prior); its last checkpoint holds its best params
            start = None if previous is None else Resume(previous.snapshot, previous.params, previous.history)
            params, history = fit_svi(story, data, train_idx, heldout_idx, config, seed, on_checkpoint=save,
                                      resume=start)
        if getattr(story, "learned", None) is None:
            fitted = make(params, history)
        else:
            # latent diffusion / flow: train the prior on the encoder means; an interruption here leaves the
            # VAE-stage checkpoint, which loads as the VAE with its Gaussian prior
            params, prior_history = fit_prior_stage(story, params, data, train_idx, heldout_idx, seed, progress)
            fitted = make(params, history, prior_history)
            if target is not None:
                fitted.save(target)
        if target is not None and target != Path(checkpoint_path):  # the new model replaces the old one now
            os.replace(target, checkpoint_path)
        return fitted

    def _stage1(self, adata, data: CountData, train_idx: np.ndarray, seed: int, progress: bool):
        """The frozen stage-1 predictor: the one given, or one trained on the training observations only."""
        if self.stage1 is not None:
            return self.stage1
        spec = self.spec
        if spec.mean == "glm":
            glm = ModelSpec(spec.formula, family(spec.likelihood).mean_family, layer=spec.layer,
                            library="observed" if spec.library == "latent" else spec.library)
            train = adata[np.asarray(data.obs.index[train_idx])]
            return stage1_means.GLMMean.from_fit(Model.from_spec(glm).fit(train, seed=streams.stream(seed, "stage1"),
                                                                          progress=progress))
        if spec.mean == "mlp":
            return stage1_means.MLPMean.train(data.subset(train_idx), seed=streams.stream(seed, "stage1"),
                                              progress=progress)
        raise SpecError("mean='external' needs the predictions: Model(..., mean=pg.mean.External(table_or_callable))"
                        " or a DataFrame of expected counts (observations x genes)")


def _as_predictor(mean):
    """A stage-1 predictor from what a user hands in."""
    if isinstance(mean, stage1_means.MeanPredictor):
        return mean
    if isinstance(mean, pd.DataFrame) or callable(mean):
        return stage1_means.External(mean, scale="counts")
    raise SpecError(f"mean must be 'glm', 'mlp', 'external' or a stage-1 predictor (pg.mean.External, GLMMean, "
                    f"MLPMean, a DataFrame of expected counts, a callable); got {type(mean).__name__}")


def _train_config(glm: bool, n_train: int, *, batch_size: int, max_epochs: int | None, patience: int | None,
                  learning_rate: float | None, lr_reductions: int | None, checkpoint_every: int,
                  progress: bool) -> TrainConfig:
    """The fit loop's options, with the story's defaults for those left None."""
    steps = -(-n_train // min(batch_size, n_train))
    if max_epochs is None:
        # at least ~3000 (GLM) or ~4000 (cVAE) optimizer steps, however few steps an epoch has (bulk)
        max_epochs = max(100, -(-3000 // steps)) if glm else max(400, -(-4000 // steps))
    if patience is None:  # epochs; at least ~100 (GLM) / ~500 (networks) steps, so a noisy held-out loss
        # does not stop a small fit early (a residual fit on 400 cells stopped after 600 steps with its
        # group effects half learned at 100)
        patience = max(10, -(-(100 if glm else 500) // steps))
    if learning_rate is None:
        learning_rate = 0.02 if glm else 1e-3
    if lr_reductions is None:  # the GLM's guide scales need small final steps; the cVAE does not
        lr_reductions = 2 if glm else 0
    # the cVAE's gene concentrations get 20x the network step (see TrainConfig.param_step_scale)
    steps_scale = () if glm else (("log_theta", THETA_STEP_SCALE),)
    return TrainConfig(max_epochs=max_epochs, batch_size=batch_size, learning_rate=learning_rate,
                       patience=patience, lr_reductions=lr_reductions, checkpoint_every=checkpoint_every,
                       progress=progress, param_step_scale=steps_scale)


def _split(data: CountData, holdout: float, heldout_obs, seed) -> tuple[np.ndarray, np.ndarray]:
    n = data.n_obs
    if heldout_obs is not None:
        mask = data.obs.index.isin(list(heldout_obs))
        if not mask.any():
            raise DataError("none of heldout_obs is among the observations (after dropping empty ones); "
                            "pass obs names of adata")
    else:
        if not 0 <= holdout < 1:
            raise DataError(f"holdout must be a fraction in [0, 1), got {holdout!r}")
        k = int(round(holdout * n))
        mask = np.zeros(n, bool)
        mask[streams.host_rng(seed, "holdout").choice(n, k, replace=False)] = True
    if mask.all():
        raise DataError("every observation is held out; leave some to fit on")
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def _summaries(data: CountData, rows: np.ndarray, chunk: int = 1024):
    """Per-gene log mean normalised count, least-squares start of the GLM coefficients on
    log((x + 0.5) / l), and the log library sizes of `rows` (one pass over the rows, blockwise)."""
    lib = data.library_size[rows]
    P, G = data.n_design, data.n_genes
    xtx, xty, norm_sum = np.zeros((P, P)), np.zeros((P, G)), np.zeros(G)
    for start in range(0, len(rows), chunk):
        r = rows[start : start + chunk]
        x, l, d = data.rows(r).astype(np.float64), data.library_size[r][:, None], data.design[r].astype(np.float64)
        off = 0.0 if data.offset is None else data.offset[r].astype(np.float64)
        xtx += d.T @ d
        xty += d.T @ (np.log((x + 0.5) / l) - off)
        norm_sum += (x / l).sum(0)
    beta0 = np.linalg.lstsq(xtx, xty, rcond=None)[0]
    log_mean = np.log(norm_sum / len(rows) * lib.mean() + 1e-8)
    return log_mean.astype(np.float32), beta0.astype(np.float32), np.log(lib)


TREND_ROWS = 20_000  # most training rows the trend is placed on


def _trend_init(data: CountData, rows: np.ndarray, log_mean: np.ndarray, seed):
    """The GLM's mean-dispersion trend placed on the training rows before SVI (`models.trend`)."""
    from probgex.models.trend import place_trend
    if len(rows) <= data.n_design:  # no residual degree of freedom: the trend stays the ELBO's
        return None
    if len(rows) > TREND_ROWS:  # a fixed random subset bounds memory on large single-cell sets
        rows = np.sort(streams.host_rng(seed, "trend_rows").choice(rows, TREND_ROWS, replace=False))
    y = np.concatenate([data.rows(rows[s : s + 4096]) for s in range(0, len(rows), 4096)])
    offset = None if data.offset is None else data.offset[rows]
    return place_trend(y, data.design[rows], data.library_size[rows], log_mean, offset)


def _laplace_tril(data: CountData, rows: np.ndarray, beta0: np.ndarray, spec: ModelSpec,
                  intercept: int | None, alpha: float | np.ndarray = 0.1, chunk: int = 1024) -> np.ndarray:
    """Cholesky factors (G, P, P) of the Laplace covariance of each gene's coefficients at `beta0`:
    (X' W X + prior precision)^-1 with W = mu / (1 + alpha mu) (alpha = 0 for a family without dispersion)."""
    from probgex.models.glm import INTERCEPT_SD

    a = alpha if family(spec.likelihood).role(DISPERSION) else 0.0
    P, G = data.n_design, data.n_genes
    info = np.zeros((G, P, P))
    for start in range(0, len(rows), chunk):
        r = rows[start : start + chunk]
        d = data.design[r].astype(np.float64)
        off = 0.0 if data.offset is None else data.offset[r].astype(np.float64)
        mu = data.library_size[r][:, None] * np.exp(d @ beta0.astype(np.float64) + off)
        info += np.einsum("bg,bp,bq->gpq", mu / (1 + a * mu), d, d)
    sd = np.full(P, spec.prior_scale)
    if intercept is not None:
        sd[intercept] = INTERCEPT_SD
    info += np.diag(1 / sd**2)[None]
    return np.linalg.cholesky(np.linalg.inv(info)).astype(np.float32)


class Fit:
    """A fitted model. Predictions are xarray objects with dims (sample, obs, gene)."""

    def __init__(self, spec: ModelSpec, encoding: DesignEncoding, var_names, dims: Dims,
                 log_mean: np.ndarray, params: dict, history: History, group_levels: list[str] | None,
                 heldout_obs: np.ndarray, stage1=None, library_ref: np.ndarray | None = None,
                 prior_history: PriorHistory | None = None, *, finished: bool | None = True):
        self.spec, self.encoding, self.dims = spec, encoding, dims
        if (spec.library == "size_factors") != (library_ref is not None):
            raise ValueError("a size-factor fit needs its reference (library_ref), other fits none")
        self.library_ref = None if library_ref is None else np.asarray(library_ref, np.float64)
        if (spec.mean is not None) != (stage1 is not None):
            raise ValueError("a residual-story fit needs its stage-1 predictor, other stories none")
        self.stage1 = stage1
        self.var_names = pd.Index(var_names, name="gene")
        self.log_mean = np.asarray(log_mean, np.float32)
        self.params = jax.tree.map(np.asarray, params)
        self.history, self.group_levels = history, group_levels
        self.heldout_obs = np.asarray(heldout_obs, dtype=str)
        self.prior_history = prior_history  # the learned prior's training history (None if not trained)
        # whether the SVI loop ran to its end (early stop or max_epochs): False for a periodic checkpoint
        # written while fitting, None when unknown (a file from before this was recorded)
        self.finished = finished
        # a periodic checkpoint's loop state, from which `Model.fit(resume=...)` continues (None otherwise)
        self.snapshot: Snapshot | None = None

    def __repr__(self) -> str:
        status = self.learned_prior_status
        prior = "" if status == "none" else f", {self.spec.latent.kind} prior {status}"
        if self.finished is False:
            prior += f", checkpoint of an unfinished fit (epoch {len(self.history.train)})"
        return (f"Fit({self.spec.story}, {self.spec.likelihood}, {self.spec.formula!r}, "
                f"{len(self.var_names)} genes, best epoch {self.history.best_epoch}{prior})")

    @property
    def learned_prior_status(self) -> str:
        """"none" (the spec's latent prior is Gaussian, or no latent), "trained", or "not trained": a
        checkpoint of the VAE stage of a fit with a learned prior, which predicts with the VAE-stage
        Gaussian prior until `train_prior` is run."""
        if getattr(self.spec.latent, "kind", None) not in LEARNED_PRIORS:
            return "none"
        return "trained" if "learned_prior" in self.params else "not trained"

    def train_prior(self, adata, *, progress: bool = True, empty: str = "warn",
                    checkpoint_path: str | Path | None = None) -> Fit:
        """The prior stage of a fit with a learned latent prior, on the VAE-stage parameters of this fit:
        completes a VAE-stage checkpoint (a fit interrupted during the prior stage). `adata` must be the
        data the model was fitted on; with the fit's seed and split the result equals the uninterrupted
        fit's. A trained prior is retrained the same way. Returns a new Fit (written to `checkpoint_path`)."""
        if self.learned_prior_status == "none":
            raise SpecError("train_prior needs a cVAE with a learned latent prior (latent=pg.latent.Diffusion(...) "
                            f"or Flow(...)); this model's latent is {self.spec.latent!r}")
        if self.finished is False:
            raise ModelFileError(f"this is a checkpoint written at epoch {len(self.history.train)} of the VAE stage, "
                                 "before it finished: the prior is trained on the finished VAE only; refit "
                                 "(Model.fit) to complete the VAE stage")
        data = self.data(adata, empty=empty)
        held = data.obs.index.isin(self.heldout_obs)
        if int(held.sum()) != len(self.heldout_obs):
            raise DataError(f"{len(self.heldout_obs) - int(held.sum())} of the fit's {len(self.heldout_obs)} held-out "
                            "observations are not in adata: pass the AnnData the model was fitted on")
        if held.all():
            raise DataError("every observation of adata is one of the fit's held-out ones: pass the AnnData the "
                            "model was fitted on")
        vae = {k: v for k, v in self.params.items() if k != "learned_prior"}
        params, hist = fit_prior_stage(self.story, vae, data, np.flatnonzero(~held), np.flatnonzero(held),
                                       self.dims.seed, progress)
        fitted = Fit(self.spec, self.encoding, self.var_names, self.dims, self.log_mean, params, self.history,
                     self.group_levels, self.heldout_obs, self.stage1, self.library_ref, hist,
                     finished=self.finished)
        if checkpoint_path is not None:
            fitted.save(checkpoint_path)
        return fitted

    # ----- the story and its jitted functions
    @cached_property
    def story(self):
        return build_story(self.spec, self.dims, self.log_mean)

    @cached_property
    def _predictive(self):
        return jax.jit(self.story.predictive_params, static_argnames=("n", "from_data"))

    @cached_property
    def _log_marginal(self):
        return jax.jit(self.story.log_marginal, static_argnames=("n",))

    # ----- data handling
    def data(self, adata, empty: str = "warn") -> CountData:
        """Counts of `adata` aligned to the fitted genes and encoded with the fitted design (with the
        stage-1 offset for the residual story)."""
        data = from_anndata(adata, layer=self.spec.layer, likelihood=self.spec.likelihood, empty=empty,
                            encoding=self.encoding, genes=list(self.var_names),
                            group_key=self.spec.dispersion_key, group_levels=self.group_levels)
        if self.library_ref is not None:
            data = replace(data, library_size=library.sizes(data, self.library_ref))
        return self._with_offset(data, data.library_size)

    def _with_offset(self, data: CountData, library_size) -> CountData:
        if self.stage1 is None:
            return data
        return replace(data, offset=self.stage1.log_fraction(data.obs, self.var_names, library_size))

    def _metadata(self, obs: pd.DataFrame, library_size) -> CountData:
        """A CountData without counts (zero-width) for prediction from metadata alone."""
        design = self.encoding.transform(obs)
        groups = None
        if self.spec.dispersion_key is not None:
            groups, _ = group_codes(obs, self.spec.dispersion_key, self.group_levels)
        lib = np.ones(len(obs))
        if library_size is not None:
            lib = np.asarray(library_size, np.float64).ravel()
            if lib.size not in (1, len(obs)):
                raise DataError(f"library_size has {lib.size} values for {len(obs)} observations; pass one "
                                "number or one per observation")
            lib = np.broadcast_to(lib, (len(obs),)).copy()
            if not np.all(np.isfinite(lib)) or np.any(lib <= 0):
                raise DataError("library_size must be positive and finite for every observation")
        data = CountData(counts=np.zeros((len(obs), 0), np.float32), library_size=lib, design=design,
                         encoding=self.encoding, obs=obs, var_names=pd.Index([]), groups=groups,
                         group_levels=self.group_levels)
        return self._with_offset(data, None if library_size is None else lib)

    def predictive_blocks(self, data: CountData, n: int, key, *, from_data: bool = False
                          ) -> Iterator[tuple[np.ndarray, Draws]]:
        """(rows, Draws) over blocks of `data`'s rows: n draws of the count distribution's parameters,
        latents from the conditional prior (or, with `from_data`, from the encoder)."""
        if not isinstance(n, int | np.integer) or n < 1:
            raise ValueError(f"the number of predictive draws must be a positive integer, got {n!r}")
        size = block_size(n, len(self.var_names))
        for i, start in enumerate(range(0, data.n_obs, size)):
            rows = np.arange(start, min(start + size, data.n_obs))
            batch = make_batch(data, rows, size, 1.0, with_counts=from_data)
            p = self._predictive(self.params, jax.random.fold_in(key, i), batch, n=n, from_data=from_data)
            m = len(rows)
            yield rows, Draws.of(self.spec.likelihood, {k: _rows(v, m, size) for k, v in p.items()})

    # ----- prediction
    def predict(self, obs, *, n_samples: int = 200, levels: Sequence[float] = LEVELS,
                library_size=None, seed: int | jax.Array = 0) -> xr.Dataset:
        """Draw count profiles from p(x | c) for new metadata `obs` (a DataFrame or an AnnData's obs).

        Latents come from the conditional prior and parameters from the fitted guide. Library sizes:
        `library_size` (a number or one per observation) if given; otherwise, for a latent library,
        the model's prior; otherwise drawn from the log-normal of the training library sizes.
        Returns `counts` (sample, obs, gene), predictive `mean` and `sd`, and central intervals
        `lower`/`upper` (level, obs, gene) taken from the predictive samples. `seed`: an int or a JAX key.
        """
        obs = getattr(obs, "obs", obs)
        if not isinstance(obs, pd.DataFrame):
            raise DataError(f"obs must be a pandas DataFrame or an AnnData, got {type(obs).__name__}")
        n_samples = check_n_samples(n_samples)
        levels = check_levels(levels)
        _memory.require(_memory.draws_bytes(n_samples, len(obs), len(self.var_names), len(levels), True),
                        f"predicting {n_samples} draws for {len(obs)} observations x {len(self.var_names)} genes",
                        "lower the number of draws (--n-samples / n_samples=) or predict fewer observations at a time")
        data = self._metadata(obs, library_size)
        rng, key = streams.host_rng(seed, "sampling"), streams.stream(seed, "predictive")
        draw_lib = library_size is None and self.spec.library != "latent"
        pred = self._assemble(data, self.predictive_blocks(data, n_samples, key, from_data=False), rng, levels,
                              n_samples, draw_lib)
        bad = nonfinite(pred)
        if bad:
            warnings.warn(f"the prediction has non-finite values ({bad}): the metadata or library sizes lie where "
                          "the fitted model overflows; check them against the training data", RuntimeWarning,
                          stacklevel=2)
        return pred

    def reconstruct(self, adata, *, n_samples: int = 200, levels: Sequence[float] = LEVELS,
                    seed: int | jax.Array = 0) -> xr.Dataset:
        """The reconstruction predictive of observed cells: latents from the encoder q(z | x, c)."""
        data = self.data(adata)
        levels = check_levels(levels)
        rng = streams.host_rng(seed, "sampling")
        draws = self.predictive_blocks(data, n_samples, streams.stream(seed, "predictive"), from_data=True)
        return self._assemble(data, draws, rng, levels, n_samples, False)

    def _assemble(self, data, draws, rng, levels, n_samples, draw_lib) -> xr.Dataset:
        n, G = data.n_obs, len(self.var_names)
        counts = np.empty((n_samples, n, G), np.int64)
        mean, sd = np.empty((n, G)), np.empty((n, G))
        lower, upper = np.empty((len(levels), n, G)), np.empty((len(levels), n, G))
        for rows, d in draws:
            if draw_lib:
                d = d.scaled(library.draw_training(rng, self.dims.lib_loc, self.dims.lib_scale,
                                                   (n_samples, len(rows), 1)))
            counts[:, rows] = d.sample(rng)
            mean[rows], sd[rows] = d.moments()
            lower[:, rows], upper[:, rows] = empirical_intervals(counts[:, rows], levels)
        coords = {"obs": np.asarray(data.obs.index, dtype=str), "gene": np.asarray(self.var_names, dtype=str),
                  "level": list(levels)}
        return xr.Dataset(
            {"counts": (("sample", "obs", "gene"), counts), "mean": (("obs", "gene"), mean),
             "sd": (("obs", "gene"), sd), "lower": (("level", "obs", "gene"), lower),
             "upper": (("level", "obs", "gene"), upper)},
            coords=coords, attrs={"likelihood": self.spec.likelihood, "story": self.spec.story,
                                  "formula": self.spec.formula})

    def sample(self, metadata, n: int, *, seed: int | jax.Array = 0, library_size=None, sparse: bool = True):
        """`n` synthetic count profiles per row of `metadata` as an AnnData (`probgex.synthetic.sample`)."""
        from probgex.synthetic import sample

        return sample(self, metadata, n, seed=seed, library_size=library_size, sparse=sparse)

    # ----- scoring observed data
    def evaluate(self, adata, *, n_samples: int = 100, levels: Sequence[float] = LEVELS,
                 seed: int | jax.Array = 0) -> xr.Dataset:
        """Calibration on observed counts, predicting from their metadata (and library sizes) only.

        Returns the randomized PIT per entry, the PIT coverage of central intervals pooled and by
        decile of the genes' predicted mean, the tail probabilities per entry, and the log predictive
        density per observation.
        """
        levels = check_levels(levels)
        data = self.data(adata)
        rng, key = streams.host_rng(seed, "sampling"), streams.stream(seed, "predictive")
        n, G = data.n_obs, data.n_genes
        pit, p_low, p_high, mean = (np.empty((n, G)) for _ in range(4))
        for rows, d in self.predictive_blocks(data, n_samples, key, from_data=False):
            y = data.rows(rows).astype(np.float64)
            parts = d.below_and_at(y)
            pit[rows] = d.randomized_pit(y, rng, parts)
            p_low[rows], p_high[rows] = d.tail_probabilities(y, parts)
            mean[rows] = d.moments()[0]
        decile = deciles(mean.mean(0))
        by_decile = np.array([pit_coverage(pit[:, decile == k], levels) for k in range(10)])
        lpd = self.log_predictive_density(data, n_samples=n_samples, seed=seed)
        coords = {"obs": np.asarray(data.obs.index, dtype=str), "gene": np.asarray(self.var_names, dtype=str),
                  "level": list(levels), "decile": np.arange(1, 11)}
        ds = xr.Dataset(
            {"pit": (("obs", "gene"), pit), "p_lower": (("obs", "gene"), p_low),
             "p_upper": (("obs", "gene"), p_high), "predicted_mean": (("obs", "gene"), mean),
             "coverage": (("level",), pit_coverage(pit, levels)),
             "coverage_by_decile": (("decile", "level"), by_decile),
             "gene_decile": (("gene",), decile + 1), "log_predictive_density": lpd.rename(None).variable},
            coords=coords)
        ds.attrs["mean_log_predictive_density"] = float(lpd.mean())
        return ds

    def log_predictive_density(self, adata_or_data, *, n_samples: int = 100,
                               seed: int | jax.Array = 0) -> xr.DataArray:
        """log p(x_n | c_n) per observation: for the GLM averaged over posterior draws; for the cVAE
        by importance sampling with the encoder as proposal and the conditional prior."""
        data = adata_or_data if isinstance(adata_or_data, CountData) else self.data(adata_or_data)
        key = streams.stream(seed, "log_density")
        out = np.empty(data.n_obs)
        for i, start in enumerate(range(0, data.n_obs, BLOCK)):
            rows = np.arange(start, min(start + BLOCK, data.n_obs))
            batch = make_batch(data, rows, BLOCK, 1.0)
            out[rows] = np.asarray(self._log_marginal(self.params, jax.random.fold_in(key, i), batch,
                                                      n=n_samples))[: len(rows)]
        return xr.DataArray(out, dims="obs", coords={"obs": np.asarray(data.obs.index, dtype=str)},
                            name="log_predictive_density")

    def coefficients(self, levels: Sequence[float] = (0.9,)) -> xr.Dataset:
        """GLM coefficients: posterior mean, sd and central intervals per (coef, gene)."""
        if self.spec.latent is not None:
            raise ValueError("coefficients exist only for the GLM story (latent=None)")
        P = self.dims.n_design
        loc = self.params["gp_loc"][:, :P].T
        tril = np.asarray(scale_tril(self.params["gp_scale_diag"], self.params["gp_scale_offdiag"]))
        sd = np.sqrt((tril[:, :P, :] ** 2).sum(-1)).T
        levels = check_levels(levels)
        z = np.array([norm.ppf((1 + a) / 2) for a in levels])[:, None, None]
        coords = {"coef": list(self.encoding.columns), "gene": np.asarray(self.var_names, dtype=str),
                  "level": list(levels)}
        return xr.Dataset({"mean": (("coef", "gene"), loc), "sd": (("coef", "gene"), sd),
                           "lower": (("level", "coef", "gene"), loc - z * sd),
                           "upper": (("level", "coef", "gene"), loc + z * sd)}, coords=coords)

    # ----- files
    def save(self, path: str | Path, *, overwrite: bool = True) -> Path:
        """Write the model to one `.npz` file (no pickle); `probgex.load` reads it back exactly.

        As with Python's own file writes, an existing file is replaced (`overwrite=False` refuses
        instead); the replacement is atomic, so an interrupted save leaves the old file intact."""
        path = Path(path)
        if path.is_dir():
            raise OutputError(f"{path} is a folder; pass a file path such as {path / 'model.npz'}")
        if path.exists() and not overwrite:
            raise OutputError(f"{path} already exists; pass overwrite=True to replace it or choose another path")
        header = {"spec": self.spec.to_dict(), "encoding": self.encoding.to_dict(),
                  "dims": self.dims.to_dict(), "group_levels": self.group_levels,
                  "history": {"train": self.history.train, "heldout": self.history.heldout,
                              "best_epoch": self.history.best_epoch}}
        if self.finished is not None:
            header["finished"] = bool(self.finished)
        if self.prior_history is not None:
            h = self.prior_history
            header["prior_history"] = {"train": [float(v) for v in h.train],
                                       "heldout": [float(v) for v in h.heldout], "best_step": int(h.best_step)}
        arrays = checkpoint.flatten_params(self.params)
        arrays["var_names"] = np.asarray(self.var_names, dtype=str)
        arrays["heldout_obs"] = self.heldout_obs
        arrays["log_mean"] = self.log_mean
        if self.library_ref is not None:
            arrays["library_ref"] = self.library_ref
        if self.stage1 is not None:
            header["stage1"], stage1_arrays = self.stage1.state()
            arrays |= {STAGE1 + k: v for k, v in stage1_arrays.items()}
        if self.snapshot is not None:
            header["resume"], resume_arrays = self.snapshot.to_file()
            arrays |= resume_arrays
        return checkpoint.write(path, header, arrays)

    @classmethod
    def load(cls, path: str | Path, mean=None) -> Fit:
        header, arrays = checkpoint.read(path)
        snapshot = Snapshot.pop_from_file(header, arrays)
        stage1 = None
        if "stage1" in header:
            own = {k[len(STAGE1):]: arrays.pop(k) for k in list(arrays) if k.startswith(STAGE1)}
            try:
                stage1 = stage1_means.from_state(header["stage1"], own, mean)
            except (KeyError, TypeError, ValueError) as e:
                raise ModelFileError(f"the stage-1 predictor in {path} is incomplete or invalid ({e}); refit "
                                     "and save") from e
        try:
            spec = ModelSpec.from_dict(_with_file_defaults(header["spec"]))
            encoding = DesignEncoding.from_dict(header["encoding"])
            dims = Dims(**header["dims"])
            h = header["history"]
            history = History(list(h["train"]), list(h["heldout"]), int(h["best_epoch"]))
            ph = header.get("prior_history")
            prior_history = None if ph is None else PriorHistory(list(ph["train"]), list(ph["heldout"]),
                                                                 int(ph["best_step"]))
            var_names, heldout, log_mean = arrays.pop("var_names"), arrays.pop("heldout_obs"), arrays.pop("log_mean")
            library_ref = arrays.pop("library_ref", None)
            if (spec.library == "size_factors") != (library_ref is not None):
                raise ValueError("the size-factor reference 'library_ref' is missing or unexpected")
        except (KeyError, TypeError, ValueError) as e:
            raise ModelFileError(f"the header of {path} is incomplete or invalid ({e}); refit and save") from e
        story = build_story(spec, dims, log_mean)
        template = _param_template(story, spec, dims)
        if hasattr(story, "prior_template") and any(k.startswith("param['learned_prior']") for k in arrays):
            template = {**template, **story.prior_template()}  # a checkpoint from before the prior stage lacks it
        params = checkpoint.unflatten_params(template, arrays)
        fit = cls(spec, encoding, var_names, dims, log_mean, params, history, header["group_levels"], heldout,
                  stage1, library_ref, prior_history, finished=header.get("finished"))
        fit.snapshot = snapshot
        if fit.finished is False:
            warnings.warn(f"{path} is a checkpoint written at epoch {len(history.train)}, before the fit finished: "
                          "it is valid (the best parameters up to then) but not the finished fit",
                          IncompleteFitWarning, stacklevel=3)
        elif fit.learned_prior_status == "not trained":
            warnings.warn(f"{path} is a checkpoint of the VAE stage: its {spec.latent.kind} prior is not trained "
                          "yet, so it predicts with the VAE-stage Gaussian prior; run fit.train_prior(adata) on "
                          "the training data to complete it", IncompleteFitWarning, stacklevel=3)
        return fit


def checkpoint_target(path: str | Path | None, resume: str | Path | None = None) -> Path | None:
    """Where a fit writes its checkpoints for the model file `path`: `path` itself when nothing is there
    yet, else `<stem>.partial<suffix>` beside it, so an existing model survives until the new one is
    complete (an interrupted fit leaves both). A fit resumed from `path` or from its partial file goes
    on writing to the file it resumed from."""
    if path is None:
        return None
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"checkpoint_path {path} is a folder; pass a file path such as {path / 'model.npz'}")
    partial = partial_path(path)
    if resume is not None and Path(resume).resolve() in (path.resolve(), partial.resolve()):
        return Path(resume)
    return partial if path.exists() else path


def partial_path(path: str | Path) -> Path:
    """The file beside the model file `path` that a fit replacing it checkpoints to: `<stem>.partial<suffix>`."""
    path = Path(path)
    return path.with_name(f"{path.stem}.partial{path.suffix}")


def nonfinite(pred: xr.Dataset) -> str:
    """'' when every mean and sd of a prediction is finite, else a short account of where they are not."""
    parts = []
    for v in ("mean", "sd"):
        if v in pred:
            bad = ~np.isfinite(pred[v].values)
            if bad.any():
                genes = np.asarray(pred["gene"])[bad.any(0)]
                parts.append(f"{v}: {int(bad.sum())} entries, {len(genes)} genes, e.g. {[str(g) for g in genes[:3]]}")
    return "; ".join(parts)


def _with_file_defaults(spec: dict) -> dict:
    """A saved spec with the values its file was written under where a later option's default differs:
    a diffusion prior saved before `parametrization` existed predicts the noise ("eps"); a file without
    a library was fitted with total counts (the default before "auto")."""
    if isinstance(spec, dict) and "library" not in spec:
        spec = {**spec, "library": "observed"}
    latent = spec.get("latent") if isinstance(spec, dict) else None
    if isinstance(latent, dict) and latent.get("kind") == "diffusion" and "parametrization" not in latent:
        return {**spec, "latent": {**latent, "parametrization": "eps"}}
    return spec


def _param_template(story, spec: ModelSpec, dims: Dims) -> dict:
    """The parameter structure of a story, from one initialisation on a dummy one-row batch."""
    dummy = CountData(counts=np.ones((1, dims.n_genes), np.float32), library_size=np.full(1, float(dims.n_genes)),
                      design=np.zeros((1, dims.n_design), np.float32), encoding=None, obs=pd.DataFrame(index=["0"]),
                      var_names=pd.Index([str(i) for i in range(dims.n_genes)]), groups=None, group_levels=None,
                      offset=np.zeros((1, dims.n_genes), np.float32) if spec.mean is not None else None)
    svi = make_svi(story, TrainConfig())  # the initial values are discarded: any key will do
    state = svi.init(streams.stream(0, "init"), make_batch(dummy, np.arange(1), 1, 1.0))
    return svi.get_params(state)


def _rows(a, m: int, size: int) -> np.ndarray | None:
    """The first m rows (axis -2) of a (..., size, G) array; arrays broadcast over rows pass as they are."""
    if a is None:
        return None
    a = np.asarray(a)
    return a[..., :m, :] if a.ndim >= 2 and a.shape[-2] == size else a


def load(path: str | Path, mean=None) -> Fit:
    """Load a model saved by `Fit.save` (or a checkpoint written during a fit). `mean`: the stage-1
    callable of a residual model fitted around one (a model file cannot hold Python code)."""
    return Fit.load(path, mean)
