"""Issue 13 item 2: can the training data alone decide `sample_quality` ("on" or "off")?

For each bulk row of the sample-quality table (benchmarks/README.md, "Sample quality") and each of its 5
splits (the splits, genes and seeds of `calibration_everywhere.py`), fit the default GLM with
sample_quality "off" and "on" on the training samples, score both on the held-out samples (LPD per
entry on genes with test mean >= 5, as there), and record the candidate rules' statistics, all computed
from the training samples only:

  (a) elbo:      the final ELBO of each fit (mean of the last TAIL epochs' training loss times the
                 training samples; both models omit the same data constant); "on" if it is higher.
  (b) bootstrap: heterogeneity of the training samples' noise level beyond sampling: per sample n,
                 D_n = the mean over genes (training mean >= 10) of the squared Pearson residual from a
                 per-gene NB GLM fitted by IRLS (dispersions and library sizes held at the "off" fit's);
                 T = sd_n log D_n; its null distribution from B parametric-bootstrap replicates simulated
                 from the fitted "off" model (same IRLS refitted on each); "on" if p < 0.05.
  (c) loo:       leave-one-sample-out predictive density of the training samples, per entry (genes with
                 training mean >= 5), by truncated importance sampling (Ionides 2008) over S draws of each
                 gene's posterior (the guide), weights 1 / p(y_ng | draw); for "on" the sample's own w_n
                 (its guide mean) enters the weights and the predictive draws w from the fitted prior, as
                 for a new sample. Samples alone in their design cell (leverage 1) are left out. "on" if
                 its mean LOO density per entry is higher. Also recorded: m, s and the training w.

Usage:
  PYTHONPATH=. .venv/bin/python benchmarks/quality_auto.py                       # the nine rows
  PYTHONPATH=. .venv/bin/python benchmarks/quality_auto.py --rows bottomly:6     # one row
  PYTHONPATH=. .venv/bin/python benchmarks/quality_auto.py --empirical --rows bottomly:6   # experiment (c)
  PYTHONPATH=. .venv/bin/python benchmarks/quality_auto.py --rows                # the tables of the stored runs
Results: benchmarks/results/quality_auto.json (per split), quality_auto_empirical.json (experiment (c):
"on" with a new sample's w drawn from the training samples' fitted w instead of the t prior), the
tables on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bulk_protocol import MIN_TEST_MEAN, bulk_split, expressed  # noqa: E402
from _common import RESULTS, load, machine  # noqa: E402
from calibration_everywhere import BULK, DRAWS, N_GENES, probgex_entries  # noqa: E402

ROWS = [("schurch_yeast", 1), ("schurch_yeast", 2), ("schurch_yeast", 6), ("bottomly", 1), ("bottomly", 2),
        ("bottomly", 6), ("tung_bulk", 4), ("gse60450", 1), ("gse60450", 6)]
TAIL = 200  # epochs averaged for the final ELBO
B = 200  # parametric-bootstrap replicates
MIN_MEAN = 10.0  # genes entering the heterogeneity statistic


def final_elbo(fit, n_train: int) -> tuple[float, float]:
    """(ELBO, its SE) from the last TAIL epochs' mean training loss (negative ELBO per observation)."""
    tail = -np.asarray(fit.history.train[-TAIL:], float) * n_train
    return float(tail.mean()), float(tail.std() / np.sqrt(len(tail)))


def irls_mu(y: np.ndarray, X: np.ndarray, lib: np.ndarray, alpha: np.ndarray, iters: int = 25) -> np.ndarray:
    """Per-gene NB GLM means (n, G) with log link, offset log lib and dispersions alpha held (IRLS)."""
    n, G = y.shape
    beta = np.linalg.lstsq(X, np.log((y + 0.5) / lib[:, None]), rcond=None)[0]  # (P, G)
    for _ in range(iters):
        eta = np.log(lib)[:, None] + X @ beta
        mu = np.exp(np.clip(eta, -30, 30))
        w = mu / (1 + alpha[None] * mu)  # IRLS weights
        z = eta - np.log(lib)[:, None] + (y - mu) / mu
        XtW = np.einsum("np,ng->gpn", X, w)
        A = XtW @ X + 1e-8 * np.eye(X.shape[1])
        b = np.einsum("gpn,ng->gp", XtW, z)
        beta = np.linalg.solve(A, b[..., None])[..., 0].T
    return np.exp(np.clip(np.log(lib)[:, None] + X @ beta, -30, 30))


def free_rows(X: np.ndarray) -> np.ndarray:
    """Samples with leverage < 1 (one alone in its design cell has a zero residual in every gene)."""
    return np.flatnonzero(np.einsum("np,pq,nq->n", X, np.linalg.pinv(X.T @ X), X) < 0.999)


def heterogeneity(y, X, lib, alpha) -> tuple[float, np.ndarray]:
    """T = sd over samples of log D_n (D_n the mean squared Pearson residual of sample n; samples of
    leverage 1 left out), and log D."""
    mu = irls_mu(y, X, lib, alpha)
    r2 = (y - mu) ** 2 / (mu + alpha[None] * mu ** 2)
    logd = np.log(r2.mean(1)[free_rows(X)])
    return float(logd.std()), logd


def bootstrap(fit, train, rng: np.random.Generator) -> dict:
    """Rule (b): the parametric bootstrap of T under the fitted "off" model."""
    data = fit.data(train)
    X, lib = np.asarray(data.design, float), np.asarray(data.library_size, float)
    y = np.asarray(data.counts.todense() if hasattr(data.counts, "todense") else data.counts, float)
    keep = y.mean(0) >= MIN_MEAN
    y = y[:, keep]
    loc = np.asarray(fit.params["gp_loc"])[keep]  # (G, P + 1): coefficients, then log alpha
    P = X.shape[1]
    alpha = np.exp(loc[:, P])
    mu0 = lib[:, None] * np.exp(X @ loc[:, :P].T)
    t_obs, logd = heterogeneity(y, X, lib, alpha)
    null = []
    for _ in range(B):
        r = 1 / alpha
        ystar = rng.negative_binomial(r[None], r[None] / (r[None] + mu0)).astype(float)
        null.append(heterogeneity(ystar, X, lib, alpha)[0])
    null = np.asarray(null)
    return {"T": t_obs, "p": float((1 + (null >= t_obs).sum()) / (B + 1)), "null_median": float(np.median(null)),
            "null_q95": float(np.quantile(null, 0.95)), "log_D": logd.round(3).tolist(), "genes": int(keep.sum())}


S_LOO = 400


def nb_logpmf(y, mu, theta):
    from scipy.special import gammaln
    return (gammaln(y + theta) - gammaln(theta) - gammaln(y + 1) + theta * np.log(theta / (theta + mu))
            + y * np.log(mu / (theta + mu)))


def loo(fit, train, rng: np.random.Generator) -> dict:
    """Rule (c): mean leave-one-sample-out log predictive density per entry by truncated IS."""
    import jax
    data = fit.data(train)
    X, lib = np.asarray(data.design, float), np.asarray(data.library_size, float)
    y = np.asarray(data.counts.todense() if hasattr(data.counts, "todense") else data.counts, float)
    keep = y.mean(0) >= MIN_TEST_MEAN
    rows = free_rows(X)
    beta, extra = fit.posterior().draws(jax.random.PRNGKey(7), S_LOO)
    beta = np.asarray(beta, float)[:, :, keep]  # (S, P, G)
    theta = np.asarray(next(iter(extra.values())), float)[:, 0, keep]  # (S, G)
    y = y[rows][:, keep]
    mu = lib[rows][None, :, None] * np.exp(np.einsum("np,spg->sng", X[rows], beta))  # (S, n, G)
    p = fit.params
    if "quality_loc" in p:
        w_fit = np.asarray(p["quality_loc"], float)[rows]
        m, sd = float(np.asarray(p["quality_mean"])), float(np.asarray(p["quality_sd"]))
        w_new = m + sd * rng.standard_t(4.0, size=(S_LOO, len(rows), 1))
        ll_fit = nb_logpmf(y[None], mu, theta[:, None] * np.exp(-w_fit)[None, :, None])
        ll_new = nb_logpmf(y[None], mu, theta[:, None] * np.exp(-w_new))
    else:
        ll_fit = ll_new = nb_logpmf(y[None], mu, theta[:, None])
    lw = -ll_fit
    lw = lw - lw.max(0, keepdims=True)
    w = np.exp(lw)
    w = np.minimum(w, w.mean(0, keepdims=True) * np.sqrt(S_LOO))  # truncated IS
    dens = np.log((w * np.exp(ll_new)).sum(0) / w.sum(0) + 1e-300)  # (n, G)
    return {"lpd": float(dens.mean()), "per_sample": dens.mean(1).round(4).tolist(), "rows": rows.tolist()}


def split_data(a, formula, df, draw):
    """One split of the protocol: training / test rows, their counts on a fixed random gene subset, and
    the genes scored (test mean >= MIN_TEST_MEAN)."""
    tr, te = bulk_split(a, formula, df, seed=1000 * df + draw)
    genes = np.flatnonzero(expressed(a, tr))
    genes = np.sort(np.random.default_rng(draw).choice(genes, min(N_GENES, len(genes)), replace=False))
    b = a[:, genes]
    train, test = b[tr].copy(), b[te].copy()
    return tr, te, train, test, np.asarray(test.X, float).mean(0) >= MIN_TEST_MEAN


def split_record(a, formula, df, draw) -> dict:
    import probgex as pg
    tr, te, train, test, sel = split_data(a, formula, df, draw)
    rec = {"draw": draw, "train": list(a.obs_names[tr]), "test": list(a.obs_names[te])}
    for q in ("off", "on"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t = time.perf_counter()
            fit = pg.Model(formula, likelihood="nb", sample_quality=q).fit(train, seed=draw, progress=False)
            secs = time.perf_counter() - t
            _, lp = probgex_entries(fit, test, np.random.default_rng(draw))
        elbo, se = final_elbo(fit, len(tr))
        r = {"lpd": float(lp[:, sel].mean()), "lpd_per_sample": lp[:, sel].mean(1).tolist(), "elbo": elbo,
             "elbo_se": se, "epochs": len(fit.history.train), "fit_seconds": round(secs, 1)}
        r["loo"] = loo(fit, train, np.random.default_rng(20_000 + draw))
        if q == "on":
            p = fit.params
            r |= {"m": float(np.asarray(p["quality_mean"])), "s": float(np.asarray(p["quality_sd"])),
                  "w": np.asarray(p["quality_loc"]).round(3).tolist()}
        else:
            r["bootstrap"] = bootstrap(fit, train, np.random.default_rng(10_000 + draw))
        rec[q] = r
    return rec


def bootstrap_valid(rec: dict) -> bool:
    """False for records of the first run, whose statistic kept samples of leverage 1 (their zero residuals
    put log D at -27.6 and T near 11.6 whatever the data)."""
    return len(rec["off"]["bootstrap"]["log_D"]) == len(rec["off"]["loo"]["rows"])


def new_quality_empirical(params: dict, key, shape):
    """Experiment (c): a new sample's w drawn from the training samples' fitted w (guide mean and sd of a
    training sample chosen at random), not the fitted t prior: a new sample is like a random training
    sample (nonparametric empirical Bayes), so a 20% share of poor replicates stays 20%."""
    import jax
    import jax.numpy as jnp
    loc, sd = jnp.asarray(params["quality_loc"]), jnp.asarray(params["quality_scale"])
    k1, k2 = jax.random.split(key)
    i = jax.random.randint(k1, shape, 0, loc.shape[0])
    return loc[i] + sd[i] * jax.random.normal(k2, shape)


def empirical_record(a, formula, df, draw) -> dict:
    """The "on" fit of a split with the empirical predictive of w (`new_quality_empirical`): held-out LPD."""
    import probgex as pg
    from probgex.models import quality
    tr, te, train, test, sel = split_data(a, formula, df, draw)
    saved, quality.new_quality = quality.new_quality, new_quality_empirical
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = pg.Model(formula, likelihood="nb", sample_quality="on").fit(train, seed=draw, progress=False)
            _, lp = probgex_entries(fit, test, np.random.default_rng(draw))
    finally:
        quality.new_quality = saved
    return {"lpd": float(lp[:, sel].mean()), "lpd_per_sample": lp[:, sel].mean(1).tolist()}


def choose(rec: dict, rule: str) -> str:
    if rule == "elbo":
        return "on" if rec["on"]["elbo"] > rec["off"]["elbo"] else "off"
    if rule == "bootstrap":
        if not bootstrap_valid(rec):
            return "n/a"
        return "on" if rec["off"]["bootstrap"]["p"] < 0.05 else "off"
    if rule == "loo":
        return "on" if rec["on"]["loo"]["lpd"] > rec["off"]["loo"]["lpd"] else "off"
    raise ValueError(rule)


RULES = ("elbo", "bootstrap", "loo")


def summary(rows: dict, emp: dict | None = None) -> str:
    """Per row and split: held-out LPD per entry (genes with test mean >= 5) of off and on, the statistics,
    and each rule's choice; then per row the LPD each rule's per-split choices get (entries weighted
    equally), against off, on and the better of the two per split (oracle)."""
    out = ["| row | split | off | on - off | ELBO on - off (nats) | bootstrap T (p) | LOO on - off | m | s | "
           "choice elbo / bootstrap / loo |", "|---|---|---|---|---|---|---|---|---|---|"]
    for key, recs in rows.items():
        for r in recs:
            b = r["off"]["bootstrap"]
            bt = f"{b['T']:.3f} ({b['p']:.3f})" if bootstrap_valid(r) else "n/a"
            out.append(f"| {key} | {r['draw']} | {r['off']['lpd']:.3f} | {r['on']['lpd'] - r['off']['lpd']:+.3f} | "
                       f"{r['on']['elbo'] - r['off']['elbo']:+.1f} | {bt} | "
                       f"{r['on']['loo']['lpd'] - r['off']['loo']['lpd']:+.3f} | {r['on']['m']:.2f} | {r['on']['s']:.2f} | "
                       + " / ".join(choose(r, rule) for rule in RULES) + " |")
    emp = emp or {}
    out += ["", "| row | splits | off | on | " + " | ".join(RULES) + " | oracle | on, empirical w |",
            "|---|---|" + "---|" * (4 + len(RULES))]
    for key, recs in rows.items():
        n = np.asarray([len(r["on"]["lpd_per_sample"]) * 1.0 for r in recs])  # equal entries per split: close
        w = n / n.sum()

        def lpd(pick):
            return float(sum(wi * r[pick(r)]["lpd"] for wi, r in zip(w, recs, strict=True)))

        cells = [f"{lpd(lambda r: 'off'):.3f}", f"{lpd(lambda r: 'on'):.3f}"]
        for rule in RULES:
            ok = all(choose(r, rule) != "n/a" for r in recs)
            cells.append(f"{lpd(lambda r, rule=rule: choose(r, rule)):.3f}" if ok else "n/a")
        cells.append(f"{lpd(lambda r: 'on' if r['on']['lpd'] > r['off']['lpd'] else 'off'):.3f}")
        e = {x["draw"]: x["lpd"] for x in emp.get(key, [])}
        cells.append(f"{sum(wi * e[r['draw']] for wi, r in zip(w, recs, strict=True)):.3f}"
                     if all(r["draw"] in e for r in recs) else "")
        out.append(f"| {key} | {len(recs)} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", nargs="*", default=[f"{d}:{k}" for d, k in ROWS], help="dataset:df")
    ap.add_argument("--draws", type=int, default=DRAWS)
    ap.add_argument("--empirical", action="store_true",
                    help="experiment (c): add the 'on' fit with the empirical predictive of w to stored rows")
    args = ap.parse_args()
    path = RESULTS / "quality_auto.json"
    stored = json.loads(path.read_text()) if path.exists() else {"rows": {}}
    rows = stored["rows"]
    if args.empirical:  # its own file: a main run may be writing quality_auto.json meanwhile
        epath = RESULTS / "quality_auto_empirical.json"
        emp = json.loads(epath.read_text())["rows"] if epath.exists() else {}
        for spec in args.rows:
            name, df = spec.split(":")
            a = load(name)
            a.X = np.asarray(a.X.todense() if hasattr(a.X, "todense") else a.X)
            key = f"{name}_df{df}"
            emp[key] = []
            for draw in range(args.draws):
                emp[key].append({"draw": draw} | empirical_record(a, BULK[name][0], int(df), draw))
                print(f"{spec} draw {draw}: on with the empirical w predictive {emp[key][-1]['lpd']:.3f}", flush=True)
                epath.write_text(json.dumps({"machine": machine(), "rows": emp}, indent=1))
        return
    for spec in args.rows:
        name, df = spec.split(":")
        formula = BULK[name][0]
        a = load(name)
        a.X = np.asarray(a.X.todense() if hasattr(a.X, "todense") else a.X)
        recs = []
        for draw in range(args.draws):
            t = time.perf_counter()
            recs.append(split_record(a, formula, int(df), draw))
            r = recs[-1]
            print(f"{spec} draw {draw}: lpd off {r['off']['lpd']:.3f} on {r['on']['lpd']:.3f}  elbo on-off "
                  f"{r['on']['elbo'] - r['off']['elbo']:+.1f} (se {r['on']['elbo_se']:.1f}/{r['off']['elbo_se']:.1f})  "
                  f"boot T {r['off']['bootstrap']['T']:.3f} p {r['off']['bootstrap']['p']:.3f}  m {r['on']['m']:.2f} "
                  f"s {r['on']['s']:.2f}  loo on-off {r['on']['loo']['lpd'] - r['off']['loo']['lpd']:+.3f}  {time.perf_counter() - t:.0f}s", flush=True)
            rows[f"{name}_df{df}"] = recs  # written after every split: a long run keeps what it has
            path.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=1))
    epath = RESULTS / "quality_auto_empirical.json"
    print(summary(rows, json.loads(epath.read_text())["rows"] if epath.exists() else None))


if __name__ == "__main__":
    main()
