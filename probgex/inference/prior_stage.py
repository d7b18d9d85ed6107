"""The second stage of fitting a cVAE with a learned latent prior (latent diffusion): encode the
training (and held-out) cells with the fitted encoder, train the diffusion / flow prior on the encoder
means given the design rows, and add its parameters to the fitted ones under "learned_prior".

The stage is a pure function of the VAE-stage parameters, the data and the seed: a fit interrupted
during it leaves a VAE-stage checkpoint from which `Fit.train_prior` reruns it to the same result."""

from __future__ import annotations

import jax
import numpy as np

from probgex.data import CountData
from probgex import rng as streams
from probgex.inference.minibatch import make_batch
from probgex.prior.train import PriorHistory

BLOCK = 512


def encoder_means(story, params: dict, data: CountData, rows: np.ndarray) -> np.ndarray:
    """Encoder means (len(rows), dim) in fixed-size blocks (one compilation)."""
    means = jax.jit(story.encoder_means)
    out = np.empty((len(rows), story.dim), np.float32)
    for start in range(0, len(rows), BLOCK):
        r = rows[start : start + BLOCK]
        batch = make_batch(data, r, BLOCK, 1.0)
        out[start : start + len(r)] = np.asarray(means(params, batch))[: len(r)]
    return out


def fit_prior_stage(story, params: dict, data: CountData, train_idx: np.ndarray, heldout_idx: np.ndarray,
                    seed: int, progress: bool) -> tuple[dict, PriorHistory]:
    """(params with "learned_prior" added, the prior's training history): the story's learned prior
    trained on the encoder means."""
    prior = story.learned
    z = encoder_means(story, params, data, np.asarray(train_idx))
    c = np.asarray(data.design[train_idx], np.float32)
    kw = {}
    if len(heldout_idx):
        kw = dict(z_val=encoder_means(story, params, data, np.asarray(heldout_idx)),
                  c_val=np.asarray(data.design[heldout_idx], np.float32))
    prior_params, hist = prior.fit(streams.stream(seed, "prior_stage"), z, c, progress=progress, **kw)
    return {**params, "learned_prior": prior_params}, hist
