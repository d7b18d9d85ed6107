"""Does probgex's synthetic data help a downstream classifier? (issue 16, part 2)

Cell-type classification on `kang_ctrl5` (4 PBMC types), tested on the fixed held-out cells of
`../shared/data/splits/kang_ctrl5_heldout.txt`. In the training cells one type (`--rare`, NK cells by
default: the type most confused with CD4 T cells) is made rare: only k of its training cells are kept
(k = 5, 20, 50; which k cells depends on the seed). Features: log1p CP10k over the `--genes` most
variable genes of the training cells (variance of log1p CP10k; the CP10k is over these genes, so that
real and synthetic cells are normalised alike). Classifiers (scikit-learn): multinomial logistic
regression and a small MLP (one hidden layer of 64, early stopping).

Rows (each brings the rare type to `--target` training cells, except "real only"):
- real only;
- random oversampling of the k rare cells (imbalanced-learn RandomOverSampler);
- SMOTE (imbalanced-learn, k_neighbors = min(5, k - 1)) on the log1p CP10k features;
- probgex synthetic: a generator `~ cluster_id` (short fits, `generator`) fitted on the same training cells only (never the held-out
  ones) on the raw counts of the selected genes, then `pg.sample(fit, the k rare cells' metadata, n)` with
  each source cell's own library size (total over the selected genes) passed as a column: an NB GLM
  ("glm") and/or a cVAE with a Gaussian prior ("cvae", latent 10) and/or one with a flow prior ("flow").

Scores on the held-out cells: macro-F1 over the 4 types and the rare type's F1; mean and sd over seeds.

`--task condition`: the same question for a condition classifier on `kang_muscat` (1,556 PBMCs, 5 types x
ctrl / stim; held-out cells `splits/kang_muscat_heldout.txt`): the label is `group_id` (stim vs ctrl)
within one cell type (`--within`, CD4 T cells by default), whose stimulated training cells are made rare
(k of them kept). The classifier is trained and tested on that type's cells only. Oversampling and SMOTE
have only those k cells to work from; the generators (`~ cluster_id * group_id`) are fitted on every
type's training cells (the other types' ctrl and stim cells inform the main effects; the k cells the
interaction), so they bring in what the rest of the data set knows about stimulation. A reference row,
"real (all types)", trains the classifier on every type's training cells (the k rare ones included) and
tests it on the same type's held-out cells: the plain way to use the rest of the data. Scored: macro-F1 of
ctrl / stim and the stim F1 on the type's held-out cells. Writes benchmarks/results/augmentation_condition.json.

    PYTHONPATH=. nice -n 10 .venv/bin/python benchmarks/augmentation.py --k 5 20 50 --seeds 0 1 2 3 4
    PYTHONPATH=. nice -n 10 .venv/bin/python benchmarks/augmentation.py --task condition --k 5 20 --seeds 0 1 2 3 4

Needs scikit-learn and imbalanced-learn (the `bench` extra). Writes benchmarks/results/augmentation.json
(one record per k, seed, method and classifier, written as each seed and k finishes) and prints a markdown
table; `--report` prints the table of that file and draws benchmarks/results/augmentation.png.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import sparse

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, fixed_split, load, machine  # noqa: E402

TASKS = {  # data, split, label, rare label, (column, value) the rare group is within, generator formula
    "celltype": {"data": "kang_ctrl5", "split": "kang_ctrl5_heldout.txt", "label": "cluster_id",
                 "rare": "NK cells", "within": None, "formula": "~ cluster_id", "target": 500},
    "condition": {"data": "kang_muscat", "split": "kang_muscat_heldout.txt", "label": "group_id",
                  "rare": "stim", "within": ("cluster_id", "CD4 T cells"),
                  "formula": "~ cluster_id * group_id", "target": 175},
}
TASK = dict(TASKS["celltype"])  # set by main from --task
RARE = "__rare__"  # the class name the resamplers see for the rare group (its own class)


def dense(x) -> np.ndarray:
    return np.asarray(x.toarray() if sparse.issparse(x) else x, np.float64)


def features(counts) -> np.ndarray:
    """log1p counts per 10k (over the selected genes)."""
    x = dense(counts)
    return np.log1p(1e4 * x / np.maximum(x.sum(1, keepdims=True), 1.0))


def variable_genes(train, n: int) -> np.ndarray:
    v = features(train.X).var(0)
    return np.sort(np.argsort(v)[::-1][:n])


def classifiers(seed: int) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier

    return {"logreg": LogisticRegression(max_iter=2000, C=1.0),
            "mlp": MLPClassifier(hidden_layer_sizes=(64,), early_stopping=True, max_iter=200, random_state=seed)}


def rare_mask(obs: pd.DataFrame, rare: str) -> np.ndarray:
    """The rare group: label == rare, within TASK["within"]'s (column, value) when the task has one."""
    m = np.array(obs[TASK["label"]].astype(str) == rare, dtype=bool)
    if TASK["within"] is not None:
        col, val = TASK["within"]
        m &= np.asarray(obs[col].astype(str) == val)
    return m


def scores(clf, xtr, ytr, xte, yte, rare: str) -> dict:
    from sklearn.metrics import f1_score

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter of the small MLP
        clf.fit(xtr, ytr)
    pred = clf.predict(xte)
    labels = sorted(set(yte))
    per = f1_score(yte, pred, labels=labels, average=None, zero_division=0.0)
    return {"macro_f1": float(per.mean()), "rare_f1": float(per[labels.index(rare)])}


def make_rare(train, rare: str, k: int, seed: int):
    """The training cells with only k (seed-chosen) cells of the rare group left."""
    rng = np.random.default_rng([seed, k])
    is_rare = rare_mask(train.obs, rare)
    keep_rare = rng.choice(np.flatnonzero(is_rare), k, replace=False)
    keep = np.sort(np.concatenate([np.flatnonzero(~is_rare), keep_rare]))
    return train[keep].copy()


def generator(kind: str, epochs: int):
    """The model and its (short) fitting options: batches of 512 cells, `epochs` epochs at most (the GLM
    twice as many: its steps are cheap), early stopping on 10% of the training cells as by default."""
    import probgex as pg

    formula = TASK["formula"]
    if kind == "glm":
        return pg.Model(formula, likelihood="nb"), {"max_epochs": 2 * epochs, "batch_size": 512}
    latent = {"cvae": pg.latent.Gaussian(dim=10),
              "flow": pg.latent.Flow(dim=10, training={"max_steps": 2000})}[kind]
    return pg.Model(formula, likelihood="nb", latent=latent), {"max_epochs": epochs, "batch_size": 512}


def synthetic(kind, train, rare, n_new, seed, epochs):
    """n_new synthetic rare cells from a generator fitted on `train` (its raw counts)."""
    import probgex as pg

    model, opts = generator(kind, epochs)
    t = time.perf_counter()
    fit = model.fit(train, seed=seed, progress=False, **opts)
    fit_s = time.perf_counter() - t
    src = train.obs[rare_mask(train.obs, rare)].copy()
    src["depth"] = dense(train[src.index].X).sum(1)
    per = -(-n_new // len(src))
    s = pg.sample(fit, src, per, seed=seed, library_size="depth")
    rng = np.random.default_rng([seed, 7])
    s = s[np.sort(rng.choice(s.n_obs, n_new, replace=False))]
    return s, fit_s


def run_one(train_all, test, genes, rare, k, seed, target, methods, epochs):
    from imblearn.over_sampling import SMOTE, RandomOverSampler

    label = TASK["label"]
    train_every = make_rare(train_all, rare, k, seed)  # what the generators are fitted on
    train, sets = train_every, {}
    if TASK["within"] is not None:  # the classifier sees the type's cells only; a reference row all of them
        col, val = TASK["within"]
        sets["real (all types)"] = (features(train_every.X), np.asarray(train_every.obs[label], str))
        train = train_every[np.asarray(train_every.obs[col].astype(str) == val)].copy()
        test = test[np.asarray(test.obs[col].astype(str) == val)].copy()
    xtr, ytr = features(train.X), np.asarray(train.obs[label], str)
    xte, yte = features(test.X), np.asarray(test.obs[label], str)
    sets, info = {"real": (xtr, ytr), **sets}, {}
    # the resamplers see the rare group as its own class (the same as the rare label in the cell-type task)
    group = np.where(rare_mask(train.obs, rare), RARE, ytr)
    strategy = {RARE: target}

    def back(xy):
        x, y = xy
        return x, np.where(y == RARE, rare, y)

    if "oversample" in methods:
        sets["oversample"] = back(RandomOverSampler(sampling_strategy=strategy, random_state=seed)
                                  .fit_resample(xtr, group))
    if "smote" in methods:
        sm = SMOTE(sampling_strategy=strategy, k_neighbors=min(5, k - 1), random_state=seed)
        sets["smote"] = back(sm.fit_resample(xtr, group))
    for kind in ("glm", "cvae", "flow"):
        if kind in methods:
            s, fit_s = synthetic(kind, train_every, rare, target - k, seed, epochs)
            info[kind] = {"fit_seconds": round(fit_s, 1)}
            sets[kind] = (np.vstack([xtr, features(s.X)]), np.concatenate([ytr, np.full(s.n_obs, rare)]))
    rows = []
    for method, (x, y) in sets.items():
        for name, clf in classifiers(seed).items():
            t = time.perf_counter()
            r = scores(clf, x, y, xte, yte, rare)
            rows.append({"k": k, "seed": seed, "method": method, "classifier": name, **r,
                         "n_train": len(y), "seconds": round(time.perf_counter() - t, 1), **info.get(method, {})})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def table(rows: list[dict]) -> str:
    df = pd.DataFrame(rows)
    out = ["| k | classifier | method | macro-F1 | rare F1 | seeds |", "|---|---|---|---|---|---|"]
    order = {m: i for i, m in enumerate(["real", "real (all types)", "oversample", "smote", "glm", "cvae", "flow"])}
    for (k, clf, method), g in sorted(df.groupby(["k", "classifier", "method"]),
                                      key=lambda t: (t[0][0], t[0][1], order.get(t[0][2], 9))):
        out.append(f"| {k} | {clf} | {method} | {g.macro_f1.mean():.3f} ± {g.macro_f1.std(ddof=1) if len(g) > 1 else 0:.3f} "
                   f"| {g.rare_f1.mean():.3f} ± {g.rare_f1.std(ddof=1) if len(g) > 1 else 0:.3f} | {len(g)} |")
    return "\n".join(out)


def figure(rows: list[dict], path: Path) -> None:
    """Rare-type F1 against k, one panel per classifier, mean and sd over seeds per method."""
    import matplotlib

    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = pd.DataFrame(rows)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    for ax, (clf, g) in zip(axes, df.groupby("classifier"), strict=True):
        for i, method in enumerate([m for m in ["real", "real (all types)", "oversample", "smote", "glm", "cvae", "flow"]
                                    if m in set(g.method)]):
            m = g[g.method == method].groupby("k").rare_f1
            ks = np.array(sorted(m.groups))
            ax.errorbar(ks * (1 + 0.04 * (i - 2)), m.mean().loc[ks], yerr=m.std(ddof=1).fillna(0).loc[ks],
                        marker="o", capsize=3, label=method)
        ax.set(xscale="log", xticks=ks, xticklabels=[str(k) for k in ks], xlabel="real rare-type training cells (k)",
               title=clf)
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    axes[0].set_ylabel("rare-type F1 (held-out cells)")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", choices=sorted(TASKS), default="celltype")
    p.add_argument("--rare", default=None, help="the rare label (task default: NK cells / stim)")
    p.add_argument("--within", default=None, help="condition task: the cell type (default CD4 T cells)")
    p.add_argument("--k", type=int, nargs="+", default=[5, 20, 50])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--genes", type=int, default=500)
    p.add_argument("--target", type=int, default=None,
                   help="rare training cells after augmentation (task default: 500 / 175)")
    p.add_argument("--methods", nargs="+", default=["oversample", "smote", "glm", "cvae"])
    p.add_argument("--epochs", type=int, default=40, help="max epochs of the cVAE generators (the GLM: twice)")
    p.add_argument("--out", default=None, help="default results/augmentation.json (condition: _condition)")
    p.add_argument("--report", action="store_true", help="only print the table and draw the figure of --out")
    args = p.parse_args()
    TASK.clear()
    TASK.update(TASKS[args.task])
    if args.within is not None:
        TASK["within"] = (TASK["within"][0], args.within)
    args.rare = args.rare or TASK["rare"]
    args.target = args.target or TASK["target"]
    suffix = "" if args.task == "celltype" else f"_{args.task}"
    out = Path(args.out or RESULTS / f"augmentation{suffix}.json")
    args.out = str(out)
    if args.report:
        rows = json.loads(out.read_text())["rows"]
        print(table(rows))
        figure(rows, out.with_suffix(".png"))
        return

    adata = load(TASK["data"])
    train_all, test = fixed_split(adata, TASK["split"])
    genes = variable_genes(train_all, args.genes)
    train_all, test = train_all[:, genes].copy(), test[:, genes].copy()
    record = json.loads(out.read_text()) if out.exists() else {"rows": []}
    record.update({"args": vars(args), "machine": machine(), "n_test": int(test.n_obs),
                   "n_test_rare": int(rare_mask(test.obs, args.rare).sum()), "task": {**TASK}})
    for seed in args.seeds:  # every k of a seed first: an interrupted run leaves whole seeds
        for k in args.k:
            new = run_one(train_all, test, genes, args.rare, k, seed, args.target, args.methods, args.epochs)
            keys = {(r["k"], r["seed"], r["method"], r["classifier"]) for r in new}  # other methods' rows stay
            record["rows"] = [r for r in record["rows"]
                              if (r["k"], r["seed"], r["method"], r["classifier"]) not in keys] + new
            out.write_text(json.dumps(record, indent=1))
    print(table(record["rows"]))


if __name__ == "__main__":
    main()
