"""Learned latent priors p(z | c): a VP-SDE score model (latent diffusion) and a continuous normalizing
flow trained by flow matching, both sampled and scored through diffrax ODEs (and the diffusion also by
reverse-time SDE). Internal package: the public entry points are `probgex.latent.Diffusion` / `Flow`."""

from probgex.prior.learned import LearnedPrior, fit_learned_prior
from probgex.prior.ode import ODEOptions
from probgex.prior.sde_sampler import SDEOptions
from probgex.prior.train import PriorTrainConfig

__all__ = ["LearnedPrior", "ODEOptions", "PriorTrainConfig", "SDEOptions", "fit_learned_prior"]
