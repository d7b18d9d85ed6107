"""What the flow prior's stage adds to a tiny cVAE fit (the test suite's scale), before a flow default.

The data and model are tests/conftest.py's `cvae_fit` fixture (150 cells x 24 genes, `~ group`, encoder /
decoder (16,), 6 epochs), with the latent swapped: Gaussian vs Flow (default options) at dim 2 (the
fixture's) and at dim 10 (the default size). Each variant runs in a fresh process (JIT compilation
included, as in a test session's first use) and reports the fit's wall seconds, the prior stage's steps,
and one `predict` of 50 draws for 20 cells (sampling the flow goes through the ODE).

Usage:
  PYTHONPATH=. .venv/bin/python benchmarks/flow_prior_cost.py            # all variants, fresh processes
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = ("gaussian2", "flow2", "gaussian10", "flow10")
OUT = Path(__file__).resolve().parent / "results" / "flow_prior_cost.json"


def one(variant: str) -> dict:
    import numpy as np

    from probgex.fit import Model
    from probgex.latent import Flow, Gaussian
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import _small_adata

    adata = _small_adata()
    dim = int(variant.removeprefix("gaussian").removeprefix("flow"))
    latent = (Gaussian if variant.startswith("gaussian") else Flow)(dim=dim)
    model = Model("~ group", likelihood="nb", latent=latent, encoder=(16,), decoder=(16,),
                  dispersion="gene-group", dispersion_key="batch")
    t = time.perf_counter()
    fit = model.fit(adata, seed=0, max_epochs=6, progress=False)
    t_fit = time.perf_counter() - t
    sub = adata[:20]
    t = time.perf_counter()
    fit.predict(sub.obs, n_samples=50, library_size=np.asarray(sub.X.sum(1)).ravel(), seed=0)
    t_pred = time.perf_counter() - t
    ph = getattr(fit, "prior_history", None)
    return {"variant": variant, "fit_seconds": t_fit, "predict_seconds": t_pred,
            "prior_steps_run": None if ph is None else 250 * len(ph.train),  # Training.eval_every = 250
            "prior_best_step": None if ph is None else int(ph.best_step)}


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--one":
        print(json.dumps(one(sys.argv[2])))
        return
    rows = []
    for v in VARIANTS:
        out = subprocess.run([sys.executable, __file__, "--one", v], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    OUT.write_text(json.dumps({"rows": rows}, indent=2))


if __name__ == "__main__":
    main()
