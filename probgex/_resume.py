"""Resuming `Model.fit` from a periodic checkpoint: opening it and checking that the resumed fit is the
one that was interrupted (the same model, data and options), with a clear error where it is not.

A checkpoint records, besides the model, its data fingerprint (number of observations, a SHA-256 of
their names, the total count of each gene) and the fit's resolved options, so a mismatch is refused
before any fitting instead of silently continuing another fit.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from probgex.data import CountData
from probgex.errors import DataError, IncompleteFitWarning, ModelFileError, SpecError

OPTIONS = ("max_epochs", "batch_size", "learning_rate", "patience", "lr_reductions")  # TrainConfig fields that move results
FIX = "resume with the interrupted fit's model, data and options, or fit anew without resume"


def fingerprint(data: CountData, chunk: int = 4096) -> tuple[dict, dict[str, np.ndarray]]:
    """(JSON part, arrays) identifying the data a fit ran on: n_obs, a SHA-256 of the obs names, and the
    total count of each gene (float64: exact for integer counts)."""
    names = hashlib.sha256("\n".join(map(str, data.obs.index)).encode()).hexdigest()
    if sp.issparse(data.counts):
        totals = np.asarray(data.counts.sum(0, dtype=np.float64)).ravel()
    else:
        totals = np.zeros(data.n_genes)
        for start in range(0, data.n_obs, chunk):
            totals += data.rows(np.arange(start, min(start + chunk, data.n_obs))).sum(0, dtype=np.float64)
    return {"n_obs": int(data.n_obs), "obs_sha256": names}, {"gene_totals": totals}


def load(path: str | Path, stage1=None):
    """The Fit in a checkpoint, without the warning an unfinished one gives (resuming expects it)."""
    from probgex.fit import Fit

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IncompleteFitWarning)
        return Fit.load(path, getattr(stage1, "fn", None))


def done(fit) -> bool:
    """Whether a checkpoint holds a finished fit: nothing left to resume (a finished VAE stage of a fit with
    a learned prior still has its prior stage to run)."""
    return fit.finished is True and fit.snapshot is None and fit.learned_prior_status != "not trained"


def checkpoint_of(out: str | Path) -> Path:
    """The checkpoint `probgex fit --out OUT --resume` continues: OUT.partial.npz beside an existing model
    (a fit replacing it was interrupted), else OUT itself."""
    from probgex.fit import partial_path

    out = Path(out)
    partial = partial_path(out)
    if partial.is_file():
        return partial
    if out.is_file():
        return out
    raise ModelFileError(f"--resume: there is no checkpoint at {out} or {partial} to continue; run the fit without "
                         "--resume to start it")


def open_checkpoint(path: str | Path, spec, seed: int, stage1=None):
    """The Fit in the checkpoint at `path`, refused (ModelFileError / SpecError) when it cannot be
    resumed here: no resume state in an unfinished file, another model or another seed."""
    path = Path(path)
    previous = load(path, stage1)
    if previous.finished is None:
        raise ModelFileError(f"cannot resume from {path}: it was written by an earlier probgex that did not record "
                             "whether its fit finished; fit anew without resume")
    if previous.finished is False and previous.snapshot is None:
        raise ModelFileError(f"cannot resume from {path}: this checkpoint (epoch {len(previous.history.train)}) was "
                             "written by an earlier probgex without the optimizer state; fit anew without resume")
    check_spec(path, previous.spec, spec, choice_of(previous))
    if previous.dims.seed != seed:
        raise SpecError(f"cannot resume from {path}: it was fitted with seed={previous.dims.seed}, this fit has "
                        f"seed={seed}; pass seed={previous.dims.seed} ({FIX})")
    return previous


def choice_of(fit) -> dict | None:
    """The auto-prior decision a fit records (`inference.auto_prior`), or None."""
    return (fit.fit_info or {}).get("latent_choice")


def check_spec(path: Path, saved, spec, choice: dict | None = None) -> None:
    """The model being fitted is the checkpoint's (its library choice "auto" matches any resolved one; a
    latent "auto" the prior a finished fit chose with it, `choice` its recorded decision)."""
    a, b = saved.to_dict(), spec.to_dict()
    if b.get("library") == "auto":
        b["library"] = a.get("library")
    if choice is not None and getattr(spec.latent, "kind", None) == "auto":
        b["latent"] = spec.latent.resolve(choice.get("chosen")).to_dict()
    diff = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    if diff:
        told = "; ".join(f"{k}: {a.get(k)!r} there, {b.get(k)!r} here" for k in diff)
        raise SpecError(f"cannot resume from {path}: it holds another model ({told}); {FIX}")


def check_data(path: Path, previous, data: CountData) -> None:
    """`data` is the data the checkpoint's fit ran on: genes, observations, design encoding, counts."""
    genes = list(map(str, data.var_names))
    if genes != list(map(str, previous.var_names)):
        raise DataError(f"cannot resume from {path}: it was fitted on {len(previous.var_names)} genes, this data has "
                        f"{len(genes)} (or other names or order); pass the data the interrupted fit used")
    if previous.encoding.to_dict() != data.encoding.to_dict():
        raise DataError(f"cannot resume from {path}: the metadata encode another design than the checkpoint's "
                        f"(columns {list(previous.encoding.columns)}); pass the data the interrupted fit used")
    if previous.snapshot is None:  # a finished fit: genes and design checked, nothing is fitted
        return
    context, arrays = fingerprint(data)
    saved = previous.snapshot.context.get("data", {})
    if saved.get("n_obs") != context["n_obs"]:
        raise DataError(f"cannot resume from {path}: it was fitted on {saved.get('n_obs')} observations, this data "
                        f"has {context['n_obs']}; pass the data the interrupted fit used")
    if saved.get("obs_sha256") != context["obs_sha256"]:
        raise DataError(f"cannot resume from {path}: the observation names differ from the fit's; pass the data "
                        "the interrupted fit used")
    totals = previous.snapshot.context_arrays.get("gene_totals")
    if totals is None or not np.array_equal(totals, arrays["gene_totals"]):
        raise DataError(f"cannot resume from {path}: the counts differ from those the fit ran on (per-gene totals); "
                        "pass the data the interrupted fit used")


def options(config) -> dict:
    """The resolved options a checkpoint records (those that change the result)."""
    return {k: getattr(config, k) for k in OPTIONS}


def check_options(path: Path, previous, config, heldout_obs: np.ndarray) -> None:
    """The held-out split and the resolved fitting options are the checkpoint's."""
    if list(map(str, previous.heldout_obs)) != list(map(str, heldout_obs)):
        raise SpecError(f"cannot resume from {path}: the held-out observations differ from the fit's "
                        f"({len(previous.heldout_obs)} there, {len(heldout_obs)} here); pass the same holdout / "
                        f"heldout_obs and seed ({FIX})")
    if previous.snapshot is None:  # a finished fit: nothing is fitted with these options
        return
    saved, here = previous.snapshot.context.get("options", {}), options(config)
    diff = [k for k in OPTIONS if saved.get(k) != here.get(k)]
    if diff:
        told = ", ".join(f"{k}={saved.get(k)!r}" for k in diff)
        now = ", ".join(f"{k}={here.get(k)!r}" for k in diff)
        raise SpecError(f"cannot resume from {path}: it was fitted with {told}, this fit has {now}; pass the "
                        f"interrupted fit's options ({FIX})")
