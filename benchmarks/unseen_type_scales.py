"""Why no exchangeable interaction prior covers CD14+ monocytes (issue 16 part 3): pseudo-bulk log fold changes
of kang_muscat per cell type, no model. For each held-out type k, with the four other types seen:
  - each gene's deviation of the held-out type's log fold change from the seen types' mean, in units of the
    spread of the seen types' deviations (s_g, 3 df), z = (L_k - mean_seen) / (s_g sqrt(1 + 1/4)): under an
    exchangeable model with a per-gene scale, z ~ Student-t with 3 df; median |z| over the expressed genes
    (above-median expression) and over the type's top 100 DEGs (as `unseen_combinations.py` picks them);
  - the coverage of the exact per-gene t_3 predictive (and of a normal one) at 90%, on the DEGs and expressed
    genes: what the per-gene prior could reach at best without count noise;
  - the seen types' own scales (median |d_gj| / s_g over expressed genes) and their log spread.
Log fold change: log((stim share + 1e-5) / (ctrl share + 1e-5)) of the type's pooled counts.

Usage: python benchmarks/unseen_type_scales.py   (seconds; writes results/unseen_type_scales.json)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, load, write  # noqa: E402
from unseen_combinations import log_cp10k  # noqa: E402


def main() -> None:
    a = load("kang_muscat")
    x = np.asarray(a.X.todense() if hasattr(a.X, "todense") else a.X).astype(float)
    types = sorted(a.obs["cluster_id"].astype(str).unique())
    ct = a.obs["cluster_id"].astype(str).to_numpy()
    stim = (a.obs["group_id"].astype(str) == "stim").to_numpy()
    L, share = [], []
    for t in types:
        m = ct == t
        s, c = x[m & stim].sum(0) / x[m & stim].sum(), x[m & ~stim].sum(0) / x[m & ~stim].sum()
        L.append(np.log(s + 1e-5) - np.log(c + 1e-5))
        share.append(x[m].sum(0) / x[m].sum())
    L, E = np.array(L), np.array(share).mean(0)
    expressed = E > np.median(E)
    q_t, q_n = stats.t(3).ppf(0.95), stats.norm.ppf(0.95)
    rows = []
    for k, t in enumerate(types):
        m = ct == t
        diff = log_cp10k(x[m & stim]).mean(0) - log_cp10k(x[m & ~stim]).mean(0)
        deg = np.argsort(-np.abs(diff))[:100]
        seen = [j for j in range(len(types)) if j != k]
        mu = L[seen].mean(0)
        d = L[seen] - mu
        s = np.sqrt((d ** 2).sum(0) / 3)
        z = np.abs(L[k] - mu) / (s * np.sqrt(1.25))
        scales = np.median(np.abs(d[:, expressed]) / s[expressed], 1)
        rows.append({"held_out": t, "median_abs_z_expressed": float(np.median(z[expressed])),
                     "median_abs_z_deg": float(np.median(z[deg])),
                     "t3_coverage90_deg": float(np.mean(z[deg] < q_t)), "t3_coverage90_expressed": float(np.mean(z[expressed] < q_t)),
                     "normal_coverage90_deg": float(np.mean(z[deg] < q_n)),
                     "seen_types": [types[j] for j in seen], "seen_scales": scales.round(3).tolist(),
                     "seen_log_scale_sd": float(np.log(scales).std(ddof=1))})
        r = rows[-1]
        print(f"{t:18s} median |z| expressed {r['median_abs_z_expressed']:.2f} DEG {r['median_abs_z_deg']:.2f}; "
              f"t3 90% coverage DEG {r['t3_coverage90_deg']:.2f} expressed {r['t3_coverage90_expressed']:.2f}; "
              f"normal DEG {r['normal_coverage90_deg']:.2f}; seen scales {r['seen_scales']} (log sd {r['seen_log_scale_sd']:.2f})")
    write(RESULTS / "unseen_type_scales.json", {"rows": rows})


if __name__ == "__main__":
    main()
