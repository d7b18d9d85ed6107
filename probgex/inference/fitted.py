"""`Fit`: a fitted model as a frozen value. It holds what the fit produced (spec, design encoding, sizes,
parameters, history) and re-encodes data for it; prediction and scoring live in `inference.predict`,
model files in `inference.modelfile`, and its methods only delegate there."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import KW_ONLY, dataclass, replace
from functools import cached_property
from pathlib import Path

import jax
import numpy as np
import pandas as pd
import xarray as xr
from scipy.stats import norm

from probgex import library
from probgex._checks import check_levels
from probgex.choices import LEARNED_PRIORS
from probgex.data import CountData, DesignEncoding, from_anndata
from probgex.errors import DataError, ModelFileError, SpecError
from probgex.inference import auto_prior
from probgex.inference import predict as _predict
from probgex.inference.predictive import Draws
from probgex.inference.prior_stage import fit_prior_stage
from probgex.inference.resume import Snapshot
from probgex.inference.svi import History
from probgex.latent import Auto
from probgex.models.dims import Dims
from probgex.models.glm import GLMPosterior
from probgex.models.story import Story, build_story
from probgex.prior.train import PriorHistory
from probgex.spec import ModelSpec

LEVELS = _predict.LEVELS


@dataclass(frozen=True, eq=False)
class Fit:
    """A fitted model. Predictions are xarray objects with dims (sample, obs, gene).

    A frozen value: a new state (a trained prior, a checkpoint's loop state) is a new Fit
    (`dataclasses.replace`)."""

    spec: ModelSpec
    encoding: DesignEncoding
    var_names: pd.Index
    dims: Dims
    log_mean: np.ndarray
    params: dict
    history: History
    group_levels: list[str] | None
    heldout_obs: np.ndarray
    stage1: object = None  # the frozen stage-1 predictor of a residual story
    library_ref: np.ndarray | None = None  # the size-factor reference of a "size_factors" library
    prior_history: PriorHistory | None = None  # the learned prior's training history (None if not trained)
    _: KW_ONLY
    # whether the SVI loop ran to its end (early stop or max_epochs): False for a periodic checkpoint
    # written while fitting, None when unknown (a file from before this was recorded)
    finished: bool | None = True
    # a periodic checkpoint's loop state, from which `Model.fit(resume=...)` continues (None otherwise)
    snapshot: Snapshot | None = None
    # how the fit ran (data source, streaming, devices, processes, loop options): `probgex info`
    fit_info: dict | None = None

    def __post_init__(self):
        if (self.spec.library == "size_factors") != (self.library_ref is not None):
            raise ValueError("a size-factor fit needs its reference (library_ref), other fits none")
        if (self.spec.mean is not None) != (self.stage1 is not None):
            raise ValueError("a residual-story fit needs its stage-1 predictor, other stories none")
        put = object.__setattr__
        if self.library_ref is not None:
            put(self, "library_ref", np.asarray(self.library_ref, np.float64))
        put(self, "var_names", pd.Index(self.var_names, name="gene"))
        put(self, "log_mean", np.asarray(self.log_mean, np.float32))
        put(self, "params", jax.tree.map(np.asarray, self.params))
        put(self, "heldout_obs", np.asarray(self.heldout_obs, dtype=str))

    def __repr__(self) -> str:
        status = self.learned_prior_status
        prior = "" if status == "none" else f", {self.spec.latent.kind} prior {status}"
        choice = (self.fit_info or {}).get("latent_choice")
        if choice:
            prior += (f", {choice.get('chosen')} prior chosen by auto ({choice.get('n_train')} training cells, "
                      f"{choice.get('active_dims')} active dims)")
        if self.finished is False:
            prior += f", checkpoint of an unfinished fit (epoch {len(self.history.train)})"
        return (f"Fit({self.spec.story}, {self.spec.likelihood}, {self.spec.formula!r}, "
                f"{len(self.var_names)} genes, best epoch {self.history.best_epoch}{prior})")

    @property
    def learned_prior_status(self) -> str:
        """"none" (the spec's latent prior is Gaussian, or no latent), "trained", or "not trained": a
        checkpoint of the VAE stage of a fit with a learned prior, or of an auto-prior fit before it chose
        (its spec still says "auto"), which predicts with the VAE-stage Gaussian prior until `train_prior`
        is run."""
        kind = getattr(self.spec.latent, "kind", None)
        if kind == Auto.kind:
            return "not trained"
        if kind not in LEARNED_PRIORS:
            return "none"
        return "trained" if "learned_prior" in self.params else "not trained"

    def train_prior(self, adata, *, progress: bool = True, empty: str = "warn",
                    checkpoint_path: str | Path | None = None) -> Fit:
        """The prior stage of a fit with a learned latent prior, on the VAE-stage parameters of this fit:
        completes a VAE-stage checkpoint (a fit interrupted during the prior stage; of an auto-prior fit the
        choice is made first, and the result's spec and `fit_info` record it). `adata` must be the
        data the model was fitted on; with the fit's seed and split the result equals the uninterrupted
        fit's. A trained prior is retrained the same way. Returns a new Fit (written to `checkpoint_path`)."""
        if self.learned_prior_status == "none":
            raise SpecError("train_prior needs a cVAE with a learned latent prior (latent=pg.latent.Diffusion(...) "
                            f"or Flow(...)) or an undecided auto prior; this model's latent is {self.spec.latent!r}")
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
        train, story, spec, info = np.flatnonzero(~held), self.story, self.spec, self.fit_info
        if isinstance(spec.latent, Auto):  # an auto-prior fit's VAE stage: decide, as the fit would have
            spec, decision = auto_prior.decide(story, vae, data, train, spec)
            info = {**(info or {}), "latent_choice": decision}
            story = build_story(spec, self.dims, self.log_mean)
        params, hist = vae, None
        if story.learned is not None:
            params, hist = fit_prior_stage(story, vae, data, train, np.flatnonzero(held), self.dims.seed, progress)
        fitted = replace(self, spec=spec, params=params, prior_history=hist, snapshot=None, fit_info=info)
        if checkpoint_path is not None:
            fitted.save(checkpoint_path)
        return fitted

    # ----- the story and its jitted functions
    @cached_property
    def story(self) -> Story:
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
        return self.with_offset(data, data.library_size)

    def with_offset(self, data: CountData, library_size) -> CountData:
        """`data` with the stage-1 offset of a residual story (unchanged for other stories)."""
        if self.stage1 is None:
            return data
        return replace(data, offset=self.stage1.log_fraction(data.obs, self.var_names, library_size))

    def metadata(self, obs: pd.DataFrame, library_size=None) -> CountData:
        """Metadata alone (no counts) encoded for prediction (`inference.predict.metadata`)."""
        return _predict.metadata(self, obs, library_size)

    # ----- prediction and scoring (`inference.predict`)
    def predictive_blocks(self, data: CountData, n: int, key, *, from_data: bool = False
                          ) -> Iterator[tuple[np.ndarray, Draws]]:
        """(rows, Draws) over blocks of `data`'s rows (`inference.predict.predictive_blocks`)."""
        return _predict.predictive_blocks(self, data, n, key, from_data=from_data)

    def predict(self, obs, *, n_samples: int = 200, levels: Sequence[float] = LEVELS,
                library_size=None, seed: int | jax.Array = 0) -> xr.Dataset:
        """Draw count profiles from p(x | c) for new metadata `obs` (`inference.predict.predict`)."""
        return _predict.predict(self, obs, n_samples=n_samples, levels=levels, library_size=library_size, seed=seed)

    def reconstruct(self, adata, *, n_samples: int = 200, levels: Sequence[float] = LEVELS,
                    seed: int | jax.Array = 0) -> xr.Dataset:
        """The reconstruction predictive of observed cells (`inference.predict.reconstruct`)."""
        return _predict.reconstruct(self, adata, n_samples=n_samples, levels=levels, seed=seed)

    def evaluate(self, adata, *, n_samples: int = 100, levels: Sequence[float] = LEVELS,
                 seed: int | jax.Array = 0) -> xr.Dataset:
        """Calibration on observed counts, predicting from their metadata (`inference.predict.evaluate`)."""
        return _predict.evaluate(self, adata, n_samples=n_samples, levels=levels, seed=seed)

    def log_predictive_density(self, adata_or_data, *, n_samples: int = 100,
                               seed: int | jax.Array = 0) -> xr.DataArray:
        """log p(x_n | c_n) per observation (`inference.predict.log_predictive_density`)."""
        return _predict.log_predictive_density(self, adata_or_data, n_samples=n_samples, seed=seed)

    def sample(self, metadata, n: int, *, seed: int | jax.Array = 0, library_size=None, sparse: bool = True):
        """`n` synthetic count profiles per row of `metadata` as an AnnData (`probgex.synthetic.sample`)."""
        from probgex.synthetic import sample

        return sample(self, metadata, n, seed=seed, library_size=library_size, sparse=sparse)

    # ----- the GLM's posterior
    def posterior(self) -> GLMPosterior:
        """The GLM story's posterior over every gene's coefficients and family parameters (`GLMPosterior`:
        exact coefficient moments, joint draws), the public accessor power and explanations read."""
        if self.spec.latent is not None:
            raise SpecError(f"a posterior over coefficients exists only for the GLM story (latent=None); this "
                            f"model is a {self.spec.story}")
        return self.story.posterior(self.params)

    def coefficients(self, levels: Sequence[float] = (0.9,)) -> xr.Dataset:
        """GLM coefficients: posterior mean, sd and central intervals per (coef, gene)."""
        if self.spec.latent is not None:
            raise SpecError("coefficients exist only for the GLM story (latent=None)")
        loc, sd = self.posterior().coefficient_moments()
        levels = check_levels(levels)
        z = np.array([norm.ppf((1 + a) / 2) for a in levels])[:, None, None]
        coords = {"coef": list(self.encoding.columns), "gene": np.asarray(self.var_names, dtype=str),
                  "level": list(levels)}
        return xr.Dataset({"mean": (("coef", "gene"), loc), "sd": (("coef", "gene"), sd),
                           "lower": (("level", "coef", "gene"), loc - z * sd),
                           "upper": (("level", "coef", "gene"), loc + z * sd)}, coords=coords)

    # ----- into an AnnData (scanpy / scvi-tools conventions; the logic lives in `probgex.annotate`)
    def annotate(self, adata, **options):
        """Results into `adata` (obsm X_probgex, obs probgex_lpd / probgex_outlier, var probgex_dispersion,
        optional layers), in place (returns None) or with copy=True into a returned copy: `probgex.annotate`."""
        from probgex.annotate import annotate
        return annotate(self, adata, **options)

    def latent(self, adata) -> np.ndarray:
        """Encoder means E[z | x, c], (n_obs, dim), as scvi's get_latent_representation (latent stories only)."""
        from probgex.annotate import latent
        return latent(self, adata)

    def normalized(self, adata, *, library_size: float = 1e4, **options):
        """Expected frequencies x `library_size` (obs x genes), as scvi's get_normalized_expression."""
        from probgex.annotate import normalized
        return normalized(self, adata, library_size=library_size, **options)

    def prior_samples(self, obs, **options) -> np.ndarray:
        """Latents drawn from the conditional prior p(z | c) (learned or Gaussian): (n_samples, n_obs, dim)."""
        from probgex.annotate import prior_samples
        return prior_samples(self, obs, **options)

    def prior_log_prob(self, obs, z, **options) -> np.ndarray:
        """log p(z | c) under the conditional prior (learned or Gaussian)."""
        from probgex.annotate import prior_log_prob
        return prior_log_prob(self, obs, z, **options)

    # ----- files (`inference.modelfile`)
    def save(self, path: str | Path, *, overwrite: bool = True) -> Path:
        """Write the model to one `.npz` file (no pickle); `probgex.load` reads it back exactly.

        As with Python's own file writes, an existing file is replaced (`overwrite=False` refuses
        instead); the replacement is atomic, so an interrupted save leaves the old file intact."""
        from probgex.inference import modelfile

        return modelfile.save(self, path, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | Path, mean=None) -> Fit:
        """The model in `path` (`inference.modelfile.load`)."""
        from probgex.inference import modelfile

        return modelfile.load(path, mean)
