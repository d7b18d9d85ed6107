"""`Model`: a declared model you can fit. `Model.fit` runs the fit procedure: validate, plan
(`inference.plan`), start (`inference.start`), SVI (`inference.svi`), the learned prior's stage, and
checkpoints (`inference.modelfile`). The fitted model is a `Fit` (`inference.fitted`); this module also
re-exports the names users import from `probgex.fit`."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from probgex import _memory, _resume, library
from probgex import mean as stage1_means
from probgex import rng as streams
from probgex._checks import check_fit_options, check_levels, check_n_samples  # noqa: F401 (public here)
from probgex.data import CountData, from_anndata, without_obs
from probgex.errors import DataError, SpecError
from probgex.inference import auto_prior, coef_prior, plan, start
from probgex.inference.fitted import LEVELS, Fit  # noqa: F401 (public here)
from probgex.inference.modelfile import checkpoint_target, partial_path  # noqa: F401 (public here)
from probgex.inference.predict import BLOCK, block_size, nonfinite  # noqa: F401 (public here)
from probgex.inference.prior_stage import fit_prior_stage
from probgex.inference.svi import Resume, fit_svi
from probgex.latent import Auto
from probgex.models.families import family
from probgex.models.story import Dims, build_story
from probgex.spec import ModelSpec


class Model:
    """A declared model: `Model("~ cell_type + stim", likelihood="nb", latent=10)`.

    `latent=k` (an int) is the cVAE with `latent.Auto(dim=k)`: its prior (the flow or the Gaussian) is
    chosen after the VAE stage (`inference.auto_prior`); `latent=Gaussian(dim=k)` / `Flow(dim=k)` force one.

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
            progress: bool = True, empty: str = "warn", resume: str | Path | None = None,
            memory_budget: int | None = None, devices: int | None = None) -> Fit:
        """Fit by SVI on the raw counts of `adata` (X or the spec's layer) with metadata in `adata.obs`.

        A fraction `holdout` of the observations (or those named in `heldout_obs`) is held out for
        early stopping (after `patience` epochs without improvement; before that, the learning rate is
        cut `lr_reductions` times after patience // 2 stale epochs). By default (None) that is 10%, except
        for a GLM with fewer than `plan.SMALL_N` (50) observations, which holds none out: in a bulk design of a few
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

        `memory_budget`: bytes the counts may take in memory; counts on disk (a path to an .h5ad file or a
        .zarr store, or a backed AnnData) over it are streamed in row chunks. `devices`: the local devices
        each minibatch is split across (None: all; `inference.sharding`), parameters replicated.

        `resume`: a periodic checkpoint of an interrupted fit to continue (its optimizer state, epoch,
        early-stopping counters and learning-rate cuts; the random streams are functions of the seed and
        the epoch), ending with the same parameters as the uninterrupted fit. Pass the same model, data
        and options (seed, holdout, max_epochs, ...; `checkpoint_every` and `progress` may differ): a
        mismatch is refused (SpecError / DataError) before any fitting. Without `checkpoint_path`, the
        checkpoints continue in the `resume` file, which the finished model finally replaces. A checkpoint
        holding a finished fit is returned as it is, with a warning saying so. With a learned prior only
        the VAE stage resumes: from a VAE-stage checkpoint (unfinished, or finished before the prior
        stage) the VAE stage is completed and the prior stage then runs from its start.
        With `latent.Auto` (the default prior of `latent=k`) the fit decides after the VAE stage
        (`inference.auto_prior`: the flow from 200 training cells up when a latent dimension is active, else
        the Gaussian); the fitted model's spec holds the prior chosen and `fit_info["latent_choice"]` why.
        Its VAE-stage checkpoints keep the Auto spec: resuming one (or `Fit.train_prior`) completes the VAE
        stage, then decides.
        """
        import jax

        spec = self.spec
        check_fit_options(max_epochs=max_epochs, batch_size=batch_size, patience=patience,
                          checkpoint_every=checkpoint_every, learning_rate=learning_rate, holdout=holdout,
                          devices=devices, count_devices=jax.process_count() == 1)
        seed = streams.seed_int(seed)
        previous = None
        if resume is not None:
            resume = Path(resume)
            previous = _resume.open_checkpoint(resume, spec, seed, self.stage1)
            checkpoint_path = resume if checkpoint_path is None else checkpoint_path
        target = checkpoint_target(checkpoint_path, resume)
        data = from_anndata(adata, spec.formula, layer=spec.layer, likelihood=spec.likelihood,
                            empty=empty, group_key=spec.dispersion_key, memory_budget=memory_budget)
        if data.streamed and spec.mean is not None:
            raise DataError("the residual story trains its stage-1 predictor on counts in memory; pass the AnnData "
                            "in memory (anndata.read_h5ad(path)) or a larger memory_budget / --memory-budget")
        if previous is not None:
            _resume.check_data(resume, previous, data)
        _memory.require(_memory.fit_bytes(spec, data.n_genes, data.n_design, min(batch_size, data.n_obs)),
                        f"a {spec.story} with a {getattr(spec.latent, 'dim', 0)}-dimensional latent on {data.n_genes} "
                        f"genes (batch {batch_size})", "lower the latent dimension (--latent-dim / latent=...(dim=)), "
                        "the network widths or the batch size")
        holdout = plan.holdout_fraction(spec, data.n_obs, holdout)
        train_idx, heldout_idx = plan.split(data.obs.index, holdout, heldout_obs, seed)
        if spec.library == "auto":
            spec = replace(spec, library=library.choose(data, train_idx))
        config = plan.plan(spec, len(train_idx), holdout=holdout, batch_size=batch_size, max_epochs=max_epochs,
                           patience=patience, learning_rate=learning_rate, lr_reductions=lr_reductions
                           ).train_config(checkpoint_every=checkpoint_every, progress=progress, devices=devices)
        if previous is not None:
            _resume.check_spec(resume, previous.spec, spec, _resume.choice_of(previous))
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
        log_mean, beta0, lib = start.summaries(data, train_idx)
        intercept = data.encoding.columns.index("Intercept") if "Intercept" in data.encoding.columns else None
        dims = Dims(n_design=data.n_design, n_genes=data.n_genes,
                    n_groups=1 if data.group_levels is None else len(data.group_levels),
                    intercept=intercept, lib_loc=float(lib.mean()), lib_scale=float(max(lib.std(), 1e-3)),
                    seed=seed, n_obs=data.n_obs if spec.sample_quality == "on" else 0,
                    **coef_prior.dims_fields(spec, data, train_idx))
        if previous is not None and (previous.dims != dims or not np.array_equal(previous.log_mean, log_mean)):
            raise DataError(f"cannot resume from {resume}: the library sizes or counts of the training observations "
                            "differ from those the fit ran on; pass the data the interrupted fit used")
        glm_start = None
        if spec.latent is None:  # the GLM story (plain or around a stage-1 offset) starts near the answer
            glm_start = start.glm_start(data, train_idx, spec, log_mean, beta0, intercept, seed, dims.coef_terms)
        story = build_story(spec, dims, log_mean, glm_start)
        info = fit_info(data, adata, config)
        heldout_names = np.asarray(data.obs.index[heldout_idx])

        def make(params, history, prior_history=None, finished=True, snapshot=None):
            return Fit(spec, data.encoding, data.var_names, dims, log_mean, params, history,
                       data.group_levels, heldout_names, stage1, library_ref,
                       prior_history, finished=finished, snapshot=snapshot, fit_info=info)

        save = None
        if target is not None and not _writer():  # several processes: process 0 writes the model file
            target = None
        if target is not None:
            context, context_arrays = _resume.fingerprint(data)
            context = {"data": context, "options": _resume.options(config)}

            def save(params, history, finished, snapshot=None):
                if snapshot is not None:  # what resuming from this checkpoint needs
                    snapshot = replace(snapshot, context=context, context_arrays=context_arrays)
                make(params, history, finished=finished, snapshot=snapshot).save(target)
        if data.streamed:  # the loop reads no metadata: let go of the obs table (names, columns), O(cells)
            data = without_obs(data)
        if previous is not None and previous.snapshot is None:  # a finished VAE stage: the prior stage is left
            params, history = previous.params, previous.history
        else:  # the VAE stage (the whole fit without a learned prior); its last checkpoint holds its best params
            resumed = None if previous is None else Resume(previous.snapshot, previous.params, previous.history)
            params, history = fit_svi(story, data, train_idx, heldout_idx, config, seed, on_checkpoint=save,
                                      resume=resumed)
        decided = isinstance(spec.latent, Auto)
        if decided:  # the default prior: the flow or the Gaussian, chosen on the VAE stage's encoder means
            spec, decision = auto_prior.decide(story, params, data, train_idx, spec)
            info = {**info, "latent_choice": decision}  # make() reads spec and info from here on
            story = build_story(spec, dims, log_mean, glm_start)
        if story.learned is None:
            fitted = make(params, history)
            if decided and target is not None:  # the VAE-stage checkpoint says "auto": the model says which
                fitted.save(target)
        else:
            # latent diffusion / flow: train the prior on the aggregate posterior (q(z | x, c) draws); an interruption here leaves the
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


def _writer() -> bool:
    """Whether this process writes files (the only one, or process 0 of several)."""
    import jax

    return jax.process_index() == 0


def fit_info(data: CountData, adata, config) -> dict:
    """How a fit ran, recorded in its model file (`probgex info`): the data source, whether the counts
    were streamed from disk, the devices and processes, the sizes and the loop's options."""
    import jax

    from probgex.inference.sharding import local_mesh, n_devices

    source = str(adata) if isinstance(adata, str | Path) else "AnnData in memory" if not data.streamed \
        else str(getattr(data.counts, "label", "backed AnnData"))
    return {"data_source": source, "streamed": bool(data.streamed), "n_obs": int(data.n_obs),
            "n_genes": int(data.n_genes), "devices": n_devices(local_mesh(config.devices)),
            "processes": int(jax.process_count()),
            "platform": jax.default_backend(), "batch_size": int(config.batch_size),
            "max_epochs": int(config.max_epochs), "learning_rate": float(config.learning_rate)}


def load(path: str | Path, mean=None) -> Fit:
    """Load a model saved by `Fit.save` (or a checkpoint written during a fit). `mean`: the stage-1
    callable of a residual model fitted around one (a model file cannot hold Python code)."""
    from probgex.inference import modelfile

    return modelfile.load(path, mean)
