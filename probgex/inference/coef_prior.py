"""The GLM's learned coefficient prior (`coef_prior="learned"`, no JAX): which formula term each design column
belongs to, and where each term's prior sd starts before the ELBO fits it.

Each formula term t (a main effect, an interaction: its group of design columns; the intercept excluded) gets
one prior sd tau_t shared by all genes: beta_gj ~ N(0, tau_t^2) for j in t. The ELBO fits tau_t (type-II
maximum likelihood, as DESeq2's betaPrior and apeglm place a coefficient's prior scale from all genes), so a
design column that is all zero in training, e.g. the interaction of a cell type x stimulation pair that was
never observed, keeps its prior as posterior: N(0, tau_t^2), as wide as that kind of effect varies between
genes and levels in the data.

"learned-interactions-per-gene" gives each gene its own sd per interaction term: beta_gj ~ N(0, tau_gt^2),
tau_gt = tau_t lambda_gt with lambda_gt ~ half-Cauchy(0, 1) (the horseshoe's form), tau_t fitted by the ELBO,
lambda_gt a latent with a log-normal guide per gene (a point estimate per gene would collapse toward 0 for genes
with few seen interaction coefficients). An unseen column's posterior is then the scale mixture of
N(0, tau_gt^2) over the gene's posterior of tau_gt: wide for a gene whose seen interactions are large, narrow
for one whose are not. The half-Cauchy's heavy tail leaves the few strong responders (interferon genes between
PBMC types) nearly unshrunk; a log-normal with a fitted spread shrank them toward the bulk.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

START_MIN = 0.05  # the smallest start of a term's sd (the ELBO moves it from there)
PER_LEVEL = ("learned-interactions-per-gene-level",)  # and a scale per column (level) of a learned term
PER_GENE = ("learned-interactions-per-gene", *PER_LEVEL)  # the coef_prior choices with a per-gene sd per learned term
INTERACTIONS_ONLY = ("learned-interactions", *PER_GENE)  # the choices whose main effects keep prior_scale


def column_terms(encoding, obs: pd.DataFrame, interactions_only: bool = False) -> tuple[int, ...]:
    """Per design column of a fitted encoding (`DesignEncoding`), the index of its formula term (in formula
    order, intercept excluded), -1 for the intercept (and, with `interactions_only`, for the columns of main
    effects: terms of one factor, which keep the fixed prior_scale)."""
    import formulaic

    frame = encoding._prepare(obs.iloc[:1], check_range=False)  # the levels are fixed: one row gives all columns
    mm = formulaic.model_matrix(encoding.formula, frame, na_action="raise")
    if tuple(str(c) for c in mm.columns) != tuple(encoding.columns):  # pragma: no cover  (encode_design checks)
        raise ValueError(f"the formula {encoding.formula!r} re-encodes to other columns than the fitted design")
    terms = np.full(len(encoding.columns), -1)
    t = 0
    for term, idx in mm.model_spec.term_indices.items():
        factors = [f for f in term.factors if str(f) != "1"]
        if not factors or (interactions_only and len(factors) < 2):  # the intercept, a main effect
            continue
        terms[list(idx)] = t
        t += 1
    return tuple(int(v) for v in terms)


def dims_fields(spec, data, rows: np.ndarray) -> dict:
    """The `Dims` fields of the learned prior: each column's term, and the non-intercept columns that are all
    zero in the training `rows` (nothing to learn from: their posterior is their term's prior)."""
    if spec.coef_prior == "fixed":
        return {}
    terms = column_terms(data.encoding, data.obs, interactions_only=spec.coef_prior in INTERACTIONS_ONLY)
    seen = np.abs(data.design[rows]).sum(0) > 0
    unseen = tuple(int(j) for j in np.flatnonzero(~seen) if terms[j] >= 0)
    return {"coef_terms": terms, "coef_unseen": unseen}


def start_scales(design: np.ndarray, beta0: np.ndarray, terms: tuple[int, ...], prior_scale: float) -> np.ndarray:
    """Start of every term's prior sd: the root mean square over genes of the least-squares coefficients of its
    columns that are not all zero in `design` (the training rows), within [START_MIN, prior_scale]; a term
    with no such column starts (and, with nothing to learn from, stays near) `prior_scale`. (T,) float32."""
    terms = np.asarray(terms)
    n_terms = int(terms.max()) + 1 if terms.size else 0
    seen = np.abs(design).sum(0) > 0
    out = np.full(n_terms, prior_scale, np.float64)
    for t in range(n_terms):
        cols = np.flatnonzero((terms == t) & seen)
        if cols.size:
            out[t] = np.sqrt(np.mean(np.asarray(beta0, np.float64)[cols] ** 2))
    return np.clip(out, START_MIN, prior_scale).astype(np.float32)


def column_scales(term_sd: np.ndarray, terms: tuple[int, ...], fixed_sd: np.ndarray) -> np.ndarray:
    """Per design column, its term's sd from `term_sd` (T,) or per gene (G, T); `fixed_sd` (P,) for the columns
    of no learned term (-1). (P,) or (G, P)"""
    terms = np.asarray(terms)
    term_sd = np.asarray(term_sd, np.float64)
    sd = term_sd[..., np.maximum(terms, 0)] if term_sd.shape[-1] else np.zeros((*term_sd.shape[:-1], terms.size))
    return np.where(terms < 0, fixed_sd, sd)


def start_gene_scales(design: np.ndarray, beta0: np.ndarray, terms: tuple[int, ...], term_sd: np.ndarray) -> np.ndarray:
    """Start of every gene's log prior sd per learned term (coef_prior "learned-interactions-per-gene"): the log
    root mean square of the gene's least-squares coefficients of the term's columns not all zero in `design`,
    within [START_MIN, 3 term_sd] (`term_sd` the term's start; a term with no such column starts there); the
    hyperprior's location and spread start at these values' mean and sd. (G, T) float32."""
    terms = np.asarray(terms)
    beta0 = np.asarray(beta0, np.float64)
    log_t = np.log(np.asarray(term_sd, np.float64))
    out = np.tile(log_t, (beta0.shape[1], 1))
    seen = np.abs(design).sum(0) > 0
    for t in range(len(log_t)):
        cols = np.flatnonzero((terms == t) & seen)
        if cols.size:
            rms = np.sqrt(np.mean(beta0[cols] ** 2, 0))
            out[:, t] = np.log(np.clip(rms, START_MIN, 3 * np.exp(log_t[t])))
    return out.astype(np.float32)
