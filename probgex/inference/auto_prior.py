"""The cVAE's default latent prior, `latent.Auto`: after the VAE stage (the Gaussian-network VAE every
prior shares) choose the flow prior or keep the Gaussian one, from the training cells' encoder means.

The rule and its two constants come from benchmarks/README.md, "Should the cVAE's default prior become
the flow ("auto")?", "Where does the flow start to win? A training-size sweep" and its "Decision"
paragraph: from 200 training cells up the flow won or tied on every measure (held-out LPD, coverage by
expression decile, joint structure) in every fit tried (kang_muscat 200 x3 and 1,400 x2, kang_harmony
200 and 1,800 x3, no harm on kang_ctrl5); under it the coverage was mixed (muscat 50 cells, harmony 100,
ziegenhain_scrbseq 38: the top decile over-covered), and where no latent dimension varies between cells
(the bulk sets, yeast and GTEx: 0 of 10 active) the flow only ties. The constants are that section's,
not tuned here.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from probgex.latent import Auto, Flow, Gaussian

MIN_TRAIN_CELLS = 200  # the flow from this many training cells up (benchmarks/README.md, the training-size sweep)
ACTIVE_VARIANCE = 0.01  # a latent dimension is active when its encoder means' variance across cells exceeds this


def choose(means: np.ndarray) -> dict:
    """The decision on the training cells' encoder means (n_train, dim): a plain dict with the prior chosen
    ("flow" or "gaussian"), n_train, the number of active dimensions (variance of the means across cells,
    ddof 0, > ACTIVE_VARIANCE), both thresholds and a one-line reason."""
    means = np.asarray(means, np.float64)
    if means.ndim != 2:
        raise ValueError(f"the encoder means must be (n_train, dim); got shape {means.shape}")
    n_train, dim = means.shape
    variance = means.var(axis=0) if n_train else np.zeros(dim)
    active = int(np.sum(variance > ACTIVE_VARIANCE))
    enough, any_active = n_train >= MIN_TRAIN_CELLS, active > 0
    chosen = Flow.kind if enough and any_active else Gaussian.kind
    if chosen == Flow.kind:
        reason = (f"{n_train} training cells >= {MIN_TRAIN_CELLS} and {active} of {dim} latent dimensions active: "
                  "the flow prior")
    elif not enough:
        reason = f"{n_train} training cells < {MIN_TRAIN_CELLS}: the Gaussian prior"
    else:
        reason = (f"no latent dimension active (encoder-mean variance <= {ACTIVE_VARIANCE} in all {dim}): "
                  "the Gaussian prior")
    return {"chosen": chosen, "n_train": int(n_train), "active_dims": active, "dim": int(dim),
            "min_train_cells": MIN_TRAIN_CELLS, "active_variance": ACTIVE_VARIANCE, "reason": reason}


def decide(story, params: dict, data, train_idx: np.ndarray, spec):
    """(the spec with its Auto latent resolved, the decision) from the VAE-stage parameters."""
    from probgex.inference.prior_stage import encoder_means

    if not isinstance(spec.latent, Auto):
        raise ValueError(f"decide resolves an Auto latent; this spec's is {spec.latent!r}")
    decision = choose(encoder_means(story, params, data, np.asarray(train_idx)))
    return replace(spec, latent=spec.latent.resolve(decision["chosen"])), decision
