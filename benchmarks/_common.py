"""Shared helpers for the benchmark scripts: data, fixed splits, evaluation rows, machine info."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np

DATA = Path(os.environ.get("PROBGEX_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
RESULTS = Path(__file__).resolve().parent / "results"
LEVELS = (0.5, 0.8, 0.9, 0.95)


def load(name: str) -> ad.AnnData:
    return ad.read_h5ad(DATA / f"{name}.h5ad")


def fixed_split(adata: ad.AnnData, split_file: str) -> tuple[ad.AnnData, ad.AnnData]:
    """(train, test): the test cells are those named in DATA/splits/<split_file>; train never sees them."""
    names = [s.strip() for s in (DATA / "splits" / split_file).read_text().split() if s.strip()]
    assert adata.obs_names.is_unique, "obs names must be unique for a named split"
    mask = adata.obs_names.isin(names)
    assert mask.sum() == len(set(names)), f"{len(set(names)) - mask.sum()} split names are not in the data"
    return adata[~mask].copy(), adata[mask].copy()


def machine() -> dict:
    import jax
    import numpyro
    import flax
    return {"python": platform.python_version(), "jax": jax.__version__, "numpyro": numpyro.__version__,
            "flax": flax.__version__, "backend": jax.default_backend(), "cpu_count": os.cpu_count(),
            "platform": platform.platform(), "processor": platform.processor() or platform.machine()}


def timed(fn, *args, **kwargs):
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t


def calibration_row(fit, test: ad.AnnData, *, n_samples: int = 100, sharpness_obs: int = 128,
                    seed: int = 0) -> dict:
    """Held-out calibration of `fit` on `test`, predicting from metadata + observed library sizes.

    coverage: PIT coverage of central intervals pooled over (obs, gene); decile_dev_90: the largest
    |coverage - 0.9| over the ten deciles of the genes' predicted mean; decile_dev_any: the same over all
    levels; lpd: mean log p(x_n | c_n) per held-out observation (nats); width90: mean width of the 90%
    predictive interval (upper - lower, from Fit.predict samples) over the first `sharpness_obs` held-out
    observations and all genes, with their observed library sizes.
    """
    ev, t_eval = timed(fit.evaluate, test, n_samples=n_samples, levels=LEVELS, seed=seed)
    cov = ev["coverage"].values
    byd = ev["coverage_by_decile"].values  # (decile, level)
    i90 = LEVELS.index(0.9)
    row = {
        "coverage": {str(a): float(c) for a, c in zip(LEVELS, cov)},
        "coverage_by_decile_90": [float(c) for c in byd[:, i90]],
        "decile_dev_90": float(np.max(np.abs(byd[:, i90] - 0.9))),
        "decile_dev_any": float(np.max(np.abs(byd - np.asarray(LEVELS)[None, :]))),
        "lpd": float(ev.attrs["mean_log_predictive_density"]),
        "n_test": int(test.n_obs),
        "eval_seconds": t_eval,
    }
    if sharpness_obs:
        sub = test[: min(sharpness_obs, test.n_obs)]
        lib = np.asarray(sub.X.sum(1)).ravel().astype(float)
        pr, t_pred = timed(fit.predict, sub.obs, n_samples=200, levels=(0.9,), library_size=lib, seed=seed)
        row["width90"] = float((pr["upper"] - pr["lower"]).sel(level=0.9).mean())
        row["width90_obs"] = int(sub.n_obs)
        row["predict_seconds"] = t_pred
        del pr
    return row


def write(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2))
    print(f"wrote {path}", file=sys.stderr)


def median_time(fn, reps: int = 20) -> float:
    """Median wall time of `fn()` (a JAX computation, waited for) over `reps` calls after a warm-up call."""
    import jax

    jax.block_until_ready(fn())
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def check_speed_split(n_genes: int = 2000, n_test: int = 1000, seed: int = 0):
    """kang_ctrl5 on its n_genes genes with the most counts; (train, test) with n_test random test cells
    (the setup of check_block_costs.py and top_decile_shape.py)."""
    a = load("kang_ctrl5")
    totals = np.asarray(a.X.sum(0)).ravel()
    a = a[:, np.sort(np.argsort(-totals, kind="stable")[:n_genes])].copy()
    test = np.zeros(a.n_obs, bool)
    test[np.random.default_rng(seed).permutation(a.n_obs)[:n_test]] = True
    return a[~test].copy(), a[test].copy()


def markdown_table(columns: list[str], rows: list[list[str]]) -> str:
    """A GitHub markdown table: a header of `columns`, its rule, one line per row of formatted cells."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join([*lines, *("| " + " | ".join(r) + " |" for r in rows)])


def count_distribution(kind: str, mu, theta=None, gate=None, **options):
    """Family `kind`'s law of a count entry as a NumPyro distribution (`normalized`, `log_mu`,
    `count_term` as `CountFamily.distribution`): the call the speed benchmarks were written against,
    before the families registry replaced it."""
    from probgex.models.families import family

    p = {"mu": mu} | ({} if theta is None else {"theta": theta}) | ({} if gate is None else {"gate": gate})
    return family(kind).distribution(p, **options)
