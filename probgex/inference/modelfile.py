"""Model files: a `Fit` as one `.npz` (arrays, no pickle) with a JSON header and SHA-256
(`inference.checkpoint`), read back exactly; where a fit checkpoints beside an existing model."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from probgex import mean as stage1_means
from probgex import rng as streams
from probgex.data import CountData, DesignEncoding
from probgex.errors import IncompleteFitWarning, ModelFileError, OutputError
from probgex.inference import checkpoint
from probgex.inference.minibatch import make_batch
from probgex.inference.resume import Snapshot
from probgex.inference.svi import History, TrainConfig, make_svi
from probgex.models.dims import Dims
from probgex.models.story import build_story
from probgex.prior.train import PriorHistory
from probgex.spec import ModelSpec

STAGE1 = "stage1$"  # prefix of the stage-1 predictor's arrays in a model file


def save(fit, path: str | Path, *, overwrite: bool = True) -> Path:
    """Write `fit` to one `.npz` file (atomically; `overwrite=False` refuses an existing file)."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path} is a folder; pass a file path such as {path / 'model.npz'}")
    if path.exists() and not overwrite:
        raise OutputError(f"{path} already exists; pass overwrite=True to replace it or choose another path")
    header = {"spec": fit.spec.to_dict(), "encoding": fit.encoding.to_dict(),
              "dims": fit.dims.to_dict(), "group_levels": fit.group_levels,
              "history": {"train": fit.history.train, "heldout": fit.history.heldout,
                          "best_epoch": fit.history.best_epoch}}
    if fit.finished is not None:
        header["finished"] = bool(fit.finished)
    if fit.fit_info is not None:
        header["fit_info"] = fit.fit_info
    if fit.prior_history is not None:
        h = fit.prior_history
        header["prior_history"] = {"train": [float(v) for v in h.train],
                                   "heldout": [float(v) for v in h.heldout], "best_step": int(h.best_step)}
    arrays = checkpoint.flatten_params(fit.params)
    arrays["var_names"] = np.asarray(fit.var_names, dtype=str)
    arrays["heldout_obs"] = fit.heldout_obs
    arrays["log_mean"] = fit.log_mean
    if fit.library_ref is not None:
        arrays["library_ref"] = fit.library_ref
    if fit.stage1 is not None:
        header["stage1"], stage1_arrays = fit.stage1.state()
        arrays |= {STAGE1 + k: v for k, v in stage1_arrays.items()}
    if fit.snapshot is not None:
        header["resume"], resume_arrays = fit.snapshot.to_file()
        arrays |= resume_arrays
    return checkpoint.write(path, header, arrays)


def header(path: str | Path) -> dict:
    """The JSON header of a model file (spec, encoding, sizes, history, how it was fitted), checked
    like `load` checks it, without building the model."""
    return checkpoint.read(path)[0]


def load(path: str | Path, mean=None):
    """The Fit in a model file (or a checkpoint written during a fit), refused with a ModelFileError
    when incomplete or invalid. `mean`: the stage-1 callable of a residual model fitted around one."""
    from probgex.inference.fitted import Fit

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
    template = param_template(story, spec, dims)
    if any(k.startswith("param['learned_prior']") for k in arrays):
        template = {**template, **story.prior_template()}  # a checkpoint from before the prior stage lacks it
    params = checkpoint.unflatten_params(template, arrays)
    fit = Fit(spec, encoding, var_names, dims, log_mean, params, history, header["group_levels"], heldout,
              stage1, library_ref, prior_history, finished=header.get("finished"), snapshot=snapshot,
              fit_info=header.get("fit_info"))
    if fit.finished is False:
        warnings.warn(f"{path} is a checkpoint written at epoch {len(history.train)}, before the fit finished: "
                      "it is valid (the best parameters up to then) but not the finished fit",
                      IncompleteFitWarning, stacklevel=3)
    elif fit.learned_prior_status == "not trained":
        what = "prior (auto) is not chosen" if spec.latent.kind == "auto" else f"{spec.latent.kind} prior is not trained"
        warnings.warn(f"{path} is a checkpoint of the VAE stage: its {what} yet, so it predicts with the VAE-stage "
                      "Gaussian prior; run fit.train_prior(adata) on the training data to complete it",
                      IncompleteFitWarning, stacklevel=3)
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


def _with_file_defaults(spec: dict) -> dict:
    """A saved spec with the values its file was written under where a later option's default differs:
    a diffusion prior saved before `parametrization` existed predicts the noise ("eps"); a file without
    a library was fitted with total counts (the default before "auto")."""
    if isinstance(spec, dict) and "library" not in spec:
        spec = {**spec, "library": "observed"}
    if isinstance(spec, dict) and "sample_quality" not in spec:  # written before per-sample quality existed
        spec = {**spec, "sample_quality": "off"}
    if isinstance(spec, dict) and "coef_prior" not in spec:  # written before the learned coefficient prior
        spec = {**spec, "coef_prior": "fixed"}
    latent = spec.get("latent") if isinstance(spec, dict) else None
    if isinstance(latent, dict) and latent.get("kind") == "diffusion" and "parametrization" not in latent:
        return {**spec, "latent": {**latent, "parametrization": "eps"}}
    return spec


def param_template(story, spec: ModelSpec, dims: Dims) -> dict:
    """The parameter structure of a story, from one initialisation on a dummy one-row batch."""
    dummy = CountData(counts=np.ones((1, dims.n_genes), np.float32), library_size=np.full(1, float(dims.n_genes)),
                      design=np.zeros((1, dims.n_design), np.float32), encoding=None, obs=pd.DataFrame(index=["0"]),
                      var_names=pd.Index([str(i) for i in range(dims.n_genes)]), groups=None, group_levels=None,
                      offset=np.zeros((1, dims.n_genes), np.float32) if spec.mean is not None else None)
    svi = make_svi(story, TrainConfig())  # the initial values are discarded: any key will do
    state = svi.init(streams.stream(0, "init"), make_batch(dummy, np.arange(1), 1, 1.0))
    return svi.get_params(state)
