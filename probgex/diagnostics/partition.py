"""Attribution of the between-observation variance of per-observation values to the terms of a formula.

For values m_n over the n observations (here: a gene's expected log1p CP10k per observation), the share
of a set S of formula terms is the variance of the least-squares projection of m onto the span of the
constant and S's design columns:

    v(S) = Var_n(P_S m) = (|Q_S' m|^2 - |Q_0' m|^2) / n,

Q_S an orthonormal basis of that span. A term's share is its Shapley value over the orders of the
terms that respect marginality (an interaction after every term whose variables it contains): the mean
over those orders of v(prefix + t) - v(prefix). Its properties:

- the term shares sum to v(all terms); what the design's span leaves of Var_n(m) is the remainder;
- for orthogonal terms (a balanced design) it is the classical ANOVA decomposition, the same in any order;
  for unbalanced designs the order effects of sequential (type I) sums of squares are averaged out (as in
  LMG / Shapley R^2, Lindeman, Merenda & Gold 1980; Groemping 2007);
- the span of a marginality-closed set of terms does not depend on the contrast coding (treatment,
  sum, ...), so neither do the shares; interactions get only what their main effects cannot carry.

Values are seen with Monte Carlo error e_n of known (estimated) variance s_n^2, independent over n;
its expected contribution to v(S), sum_n (h_n(S) - 1/n) s_n^2 / n with h_n(S) = |Q_S[n]|^2 the
leverage, is subtracted, so the estimates are unbiased for the noise-free values. Plain NumPy, no JAX.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pandas as pd

from probgex.errors import SpecError

MAX_TERMS = 7  # the marginality-respecting orders are enumerated: at most 7! = 5040 of them


@dataclass(frozen=True)
class Terms:
    """The formula's terms (without the intercept): names, design columns and variables of each."""

    names: tuple[str, ...]
    columns: tuple[tuple[int, ...], ...]
    factors: tuple[frozenset[str], ...]

    def orders(self) -> list[tuple[int, ...]]:
        """Orders of the terms (indices) in which every term comes after those whose variables it contains."""
        T = len(self.names)
        before = [[u for u in range(T) if self.factors[u] < self.factors[t]] for t in range(T)]

        def valid(order):
            pos = {t: i for i, t in enumerate(order)}
            return all(pos[u] < pos[t] for t in range(T) for u in before[t])

        return [o for o in itertools.permutations(range(T)) if valid(o)]


def formula_terms(encoding, obs: pd.DataFrame) -> Terms:
    """The terms of a fitted design encoding (`DesignEncoding`) and the design columns of each."""
    import formulaic

    mm = formulaic.model_matrix(encoding.formula, encoding._prepare(obs), na_action="raise")
    if tuple(str(c) for c in mm.columns) != tuple(encoding.columns):
        raise SpecError(f"the formula {encoding.formula!r} re-encodes to other columns than the fitted design; "
                        "pass the metadata the model was fitted with")
    names, cols, factors = [], [], []
    for term, idx in mm.model_spec.term_indices.items():
        fs = frozenset(str(f) for f in term.factors if str(f) != "1")
        if not fs:  # the intercept
            continue
        names.append(str(term))
        cols.append(tuple(int(i) for i in idx))
        factors.append(fs)
    if len(names) > MAX_TERMS:
        raise SpecError(f"the formula {encoding.formula!r} has {len(names)} terms; variance attribution "
                        f"enumerates their orders and supports at most {MAX_TERMS}: fit a smaller formula")
    return Terms(tuple(names), tuple(cols), tuple(factors))


def basis(design: np.ndarray, columns) -> np.ndarray:
    """Orthonormal basis (n, r) of the span of the constant and design[:, columns] (rank-revealing SVD)."""
    n = design.shape[0]
    x = np.column_stack([np.ones(n), design[:, list(columns)].astype(np.float64)])
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    keep = s > s[0] * max(x.shape) * np.finfo(np.float64).eps * 10
    return u[:, keep]


class Partition:
    """Streaming attribution: `update` with blocks of observations, `shares` at the end.

    Holds, per set of terms that some valid order reaches (a prefix), Q_S' m and the Monte Carlo bias
    sums, each (draws, r_S, genes) or (draws, genes); nothing of size n x genes is kept.
    """

    def __init__(self, design: np.ndarray, terms: Terms, n_draws: int, n_genes: int):
        self.terms, self.n = terms, design.shape[0]
        self.orders = terms.orders()
        prefixes = {frozenset(o[:k]) for o in self.orders for k in range(len(o) + 1)}
        self.sets = sorted(prefixes, key=lambda s: (len(s), sorted(s)))
        self.q = {s: basis(design, sorted(c for t in s for c in terms.columns[t])) for s in self.sets}
        self.lev = {s: (q**2).sum(1) - 1.0 / self.n for s, q in self.q.items()}  # h_n(S) - 1/n
        self.proj = {s: np.zeros((n_draws, q.shape[1], n_genes)) for s, q in self.q.items()}
        self.bias = {s: np.zeros((n_draws, n_genes)) for s in self.sets}
        self.sq = np.zeros((n_draws, n_genes))  # sum_n m_n^2
        self.err = np.zeros((n_draws, n_genes))  # sum_n s_n^2 (1 - 1/n)
        # the same for the mean over draws of m (the plug-in values): its Q_S' m is the mean of proj
        self.sq_bar, self.err_bar = np.zeros(n_genes), np.zeros(n_genes)
        self.bias_bar = {s: np.zeros(n_genes) for s in self.sets}

    def update(self, rows: np.ndarray, genes: slice, m: np.ndarray, err_var: np.ndarray) -> None:
        """Observations `rows` of the genes `genes`: values m and their Monte Carlo variances, (draws, rows, genes)."""
        self.sq[:, genes] += (m**2).sum(1)
        self.err[:, genes] += err_var.sum(1) * (1 - 1.0 / self.n)
        m_bar, err_bar = m.mean(0), err_var.mean(0) / m.shape[0]  # every draw of these rows comes at once
        self.sq_bar[genes] += (m_bar**2).sum(0)
        self.err_bar[genes] += err_bar.sum(0) * (1 - 1.0 / self.n)
        for s in self.sets:
            self.proj[s][:, :, genes] += np.einsum("rp,srg->spg", self.q[s][rows], m)
            self.bias[s][:, genes] += np.einsum("r,srg->sg", self.lev[s][rows], err_var)
            self.bias_bar[s][genes] += self.lev[s][rows] @ err_bar

    def values(self, plug_in: bool = False) -> tuple[dict, np.ndarray]:
        """v(S) per reached set S and the between-observation variance Var_n(m), each (draws, genes); with
        `plug_in`, of the mean of m over the draws instead, each (genes,)."""
        empty = frozenset()
        if plug_in:
            proj = {s: p.mean(0) for s, p in self.proj.items()}
            mean_sq = (proj[empty] ** 2).sum(0)
            v = {s: ((proj[s] ** 2).sum(0) - mean_sq - self.bias_bar[s]) / self.n for s in self.sets}
            return v, (self.sq_bar - mean_sq - self.err_bar) / self.n
        mean_sq = (self.proj[empty] ** 2).sum(1)
        v = {s: ((self.proj[s] ** 2).sum(1) - mean_sq - self.bias[s]) / self.n for s in self.sets}
        return v, (self.sq - mean_sq - self.err) / self.n

    def shares(self, plug_in: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Shapley value of each term (draws, genes, terms) and the remainder Var_n(m) - v(all) (draws, genes);
        with `plug_in`, of the mean of m over the draws: (genes, terms) and (genes,)."""
        v, between = self.values(plug_in)
        T = len(self.terms.names)
        out = np.zeros((*between.shape, T))
        for order in self.orders:
            prefix = frozenset()
            for t in order:
                nxt = prefix | {t}
                out[..., t] += v[nxt] - v[prefix]
                prefix = nxt
        out /= len(self.orders)
        return out, between - v[frozenset(range(T))]
