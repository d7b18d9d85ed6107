"""The training plan: every story-dependent default of a fit, and the held-out split, in one pure place.

`plan(spec, n_obs, ...)` turns what a user left unset (None) into numbers: how many observations to
hold out for early stopping, the epochs, the patience, the learning rate and its cuts, the per-parameter
step multipliers. No JAX here: the plan is data, computed before any tracing, and `TrainConfig` (the
loop's options) is built from it; `TrainConfig`'s own defaults are the network story's (`NETWORK`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from probgex.errors import DataError

SMALL_N = 50  # below this many observations the default GLM fit holds none out for early stopping
THETA_STEP_SCALE = 20.0  # Adam step multiplier of the cVAE / residual log-concentrations: 0.02 at lr 1e-3, the GLM's rate


@dataclass(frozen=True)
class StoryDefaults:
    """What a story's fit does when the user does not say."""

    min_steps: int  # optimizer steps at least, however few steps an epoch has (bulk)
    min_epochs: int
    patience_steps: int  # patience at least this many steps, so a noisy held-out loss does not stop early
    learning_rate: float
    lr_reductions: int  # learning-rate cuts on a plateau before early stopping may end the fit
    step_scale: tuple[tuple[str, float], ...] = ()  # per-parameter Adam step multipliers


# the GLM's guide scales need small final steps (two cuts); networks do not. ~3000 (GLM) / ~4000 (cVAE)
# steps; patience ~100 / ~500 steps (a residual fit on 400 cells stopped after 600 steps with its group
# effects half learned at 100); the cVAE's gene concentrations get 20x the network step, and so do the
# location and scale of its per-cell dispersion scales' prior (sample_quality "on"; at the network's
# step s moved from 0.1 to 0.13 in 600 steps on a simulation whose true spread is 0.7)
GLM = StoryDefaults(min_steps=3000, min_epochs=100, patience_steps=100, learning_rate=0.02, lr_reductions=2)
NETWORK = StoryDefaults(min_steps=4000, min_epochs=400, patience_steps=500, learning_rate=1e-3, lr_reductions=0,
                        step_scale=(("log_theta", THETA_STEP_SCALE), ("quality_mean", THETA_STEP_SCALE),
                                    ("quality_sd", THETA_STEP_SCALE)))


def defaults(spec) -> StoryDefaults:
    """The GLM story's defaults (plain or around a stage-1 offset) or the network stories'."""
    return GLM if spec.latent is None else NETWORK


@dataclass(frozen=True)
class Plan:
    """A fit's resolved options: the holdout fraction and the loop's numbers."""

    holdout: float
    max_epochs: int
    batch_size: int
    patience: int
    learning_rate: float
    lr_reductions: int
    step_scale: tuple[tuple[str, float], ...]

    def train_config(self, *, checkpoint_every: int, progress: bool, devices: int | None = 1):
        from probgex.inference.svi import TrainConfig  # the loop's module loads JAX

        return TrainConfig(max_epochs=self.max_epochs, batch_size=self.batch_size,
                           learning_rate=self.learning_rate, patience=self.patience,
                           lr_reductions=self.lr_reductions, checkpoint_every=checkpoint_every,
                           progress=progress, param_step_scale=self.step_scale, devices=devices)


def holdout_fraction(spec, n_obs: int, holdout: float | None) -> float:
    """None -> 10%, except a GLM with fewer than SMALL_N observations, which holds none out: in a bulk
    design of a few samples a held-out sample costs a residual degree of freedom (6 samples and 5
    coefficients left the dispersions none)."""
    if holdout is not None:
        return holdout
    return 0.0 if spec.latent is None and n_obs < SMALL_N else 0.1


def plan(spec, n_train: int, *, holdout: float, batch_size: int, max_epochs: int | None = None,
         patience: int | None = None, learning_rate: float | None = None,
         lr_reductions: int | None = None) -> Plan:
    """The options left None, from the story's defaults and the number of training observations."""
    d = defaults(spec)
    steps = -(-n_train // min(batch_size, n_train))  # optimizer steps per epoch
    return Plan(holdout=holdout,
                max_epochs=max(d.min_epochs, -(-d.min_steps // steps)) if max_epochs is None else max_epochs,
                batch_size=batch_size,
                patience=max(10, -(-d.patience_steps // steps)) if patience is None else patience,
                learning_rate=d.learning_rate if learning_rate is None else learning_rate,
                lr_reductions=d.lr_reductions if lr_reductions is None else lr_reductions,
                step_scale=d.step_scale)


def split(obs_names, holdout: float, heldout_obs, seed) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, held-out rows): those named in `heldout_obs`, else a random `holdout` fraction
    drawn from the seed's "holdout" stream."""
    from probgex import rng as streams  # loads JAX (a seed may be a key)

    n = len(obs_names)
    if heldout_obs is not None:
        mask = np.asarray(obs_names.isin(list(heldout_obs)))
        if not mask.any():
            raise DataError("none of heldout_obs is among the observations (after dropping empty ones); "
                            "pass obs names of adata")
    else:
        if not 0 <= holdout < 1:
            raise DataError(f"holdout must be a fraction in [0, 1), got {holdout!r}")
        k = int(round(holdout * n))
        mask = np.zeros(n, bool)
        mask[streams.host_rng(seed, "holdout").choice(n, k, replace=False)] = True
    if mask.all():
        raise DataError("every observation is held out; leave some to fit on")
    return np.flatnonzero(~mask), np.flatnonzero(mask)
