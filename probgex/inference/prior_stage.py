"""The second stage of fitting a cVAE with a learned latent prior (latent diffusion): encode the
training (and held-out) cells with the fitted encoder, train the diffusion / flow prior on draws of the
encoder's q(z | x, c) given the design rows (the aggregate posterior, what the decoder was trained on),
and add its parameters to the fitted ones under "learned_prior".

Draws, not the encoder means: where the latent has collapsed (no dimension varies between cells, e.g. a
bulk design the formula explains) the means are one point per condition and a prior trained on them was a
point mass of width ~1e-6, under which the held-out log density scored about -1e13 per sample; the
aggregate posterior is then q's own N(m, s^2), and few cells are no longer a few point masses.

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


def encoder_moments(story, params: dict, data: CountData, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Means and sds of q(z | x, c), two (len(rows), dim) arrays, in fixed-size blocks (one compilation)."""
    moments = jax.jit(story.encoder_moments)
    loc, scale = (np.empty((len(rows), story.dim), np.float32) for _ in range(2))
    for start in range(0, len(rows), BLOCK):
        r = rows[start : start + BLOCK]
        m, s = moments(params, make_batch(data, r, BLOCK, 1.0))
        loc[start : start + len(r)], scale[start : start + len(r)] = np.asarray(m)[: len(r)], np.asarray(s)[: len(r)]
    return loc, scale


def encoder_means(story, params: dict, data: CountData, rows: np.ndarray) -> np.ndarray:
    """Encoder means (len(rows), dim)."""
    return encoder_moments(story, params, data, rows)[0]


def fit_prior_stage(story, params: dict, data: CountData, train_idx: np.ndarray, heldout_idx: np.ndarray,
                    seed: int, progress: bool) -> tuple[dict, PriorHistory]:
    """(params with "learned_prior" added, the prior's training history): the story's learned prior
    trained on the aggregate posterior (fresh draws of q(z | x, c) of the training cells)."""
    prior = story.learned
    z, z_scale = encoder_moments(story, params, data, np.asarray(train_idx))
    c = np.asarray(data.design[train_idx], np.float32)
    kw = {}
    if len(heldout_idx):
        z_val, z_val_scale = encoder_moments(story, params, data, np.asarray(heldout_idx))
        kw = dict(z_val=z_val, z_val_scale=z_val_scale, c_val=np.asarray(data.design[heldout_idx], np.float32))
    prior_params, hist = prior.fit(streams.stream(seed, "prior_stage"), z, c, z_scale=z_scale, progress=progress,
                                   **kw)
    return {**params, "learned_prior": prior_params}, hist
