"""Why the interaction prior predicts CD14+ monocytes' stimulation worse (issue 16 part 3, diagnostic): the
CD14+ split of unseen_combinations.py, fitted with the additive GLM (`glm`) and the learned-interaction GLM
(`glm_interaction`); per gene the predicted stimulation log fold change of the held-out pair (posterior mean
of group_id[T.stim] (+ the unseen interaction, 0)) and its posterior sd, against the observed log fold change
of pooled counts (CD14+ stim vs ctrl, pseudo-count 1): correlation, median error and |predicted| vs
|observed| on the top 100 DE genes, and the share of genes whose observed change lies within the 90%
posterior interval of the predicted one. Writes results/unseen_combinations_cd14_lfc.json.

Usage: PYTHONPATH=. python benchmarks/unseen_cd14_lfc.py
"""
import sys, warnings, json
sys.path.insert(0, "benchmarks")
import numpy as np
warnings.simplefilter("ignore")
import unseen_combinations as uc
from _common import load
a = load("kang_muscat")
a.obs["stim"] = (a.obs["group_id"].astype(str) == "stim").astype(float)
x = np.asarray(a.X.todense() if hasattr(a.X, "todense") else a.X).astype(float)
t = "CD14+ Monocytes"
ty = (a.obs["cluster_id"].astype(str) == t).to_numpy(); st = (a.obs["group_id"].astype(str) == "stim").to_numpy()
m = ty & st
train = a[~m].copy()
obs_lfc = uc.log_cp10k(x[m]).mean(0) - uc.log_cp10k(x[ty & ~st]).mean(0)
deg = np.argsort(-np.abs(obs_lfc))[:100]
out = {}
for name in ("glm", "glm_interaction"):
    fit = uc.models([name])[name]().fit(train, seed=0, progress=False)
    c = fit.coefficients(); cols = list(fit.encoding.columns); mean = c["mean"].values; sd = c["sd"].values
    lfc = mean[cols.index("group_id[T.stim]")].copy()
    if name == "glm_interaction":
        j = cols.index("cluster_id[CD14+ Monocytes]:stim")
        lfc_sd = np.sqrt(sd[cols.index("group_id[T.stim]")]**2 + sd[j]**2)
    else:
        lfc_sd = sd[cols.index("group_id[T.stim]")]
    # observed log fold change on the natural-log count scale (pseudo-count), CD14 stim vs ctrl
    ls = np.log((x[m].sum(0) + 1) / x[m].sum()) - np.log((x[ty & ~st].sum(0) + 1) / x[ty & ~st].sum())
    z = (ls - lfc) / lfc_sd
    out[name] = {"corr_lfc_all": float(np.corrcoef(lfc, ls)[0, 1]), "corr_lfc_deg": float(np.corrcoef(lfc[deg], ls[deg])[0, 1]),
                 "median_abs_err_deg": float(np.median(np.abs(ls - lfc)[deg])), "median_lfc_sd_deg": float(np.median(lfc_sd[deg])),
                 "share_abs_z_lt_1.645_deg": float(np.mean(np.abs(z[deg]) < 1.645)), "share_abs_z_lt_1.645_all": float(np.mean(np.abs(z) < 1.645)),
                 "median_abs_pred_lfc_deg": float(np.median(np.abs(lfc[deg]))), "median_abs_obs_lfc_deg": float(np.median(np.abs(ls[deg])))}
    print(name, out[name], flush=True)
json.dump(out, open(uc.RESULTS / "unseen_combinations_cd14_lfc.json", "w"), indent=1)
