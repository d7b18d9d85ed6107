"""The two ways of turning noise into latents that the learned priors use, each a training loss and
an ODE vector field between a N(0, I) end (`t_noise`) and the data end (`t_data`).

VPSDE (Song et al. 2021): dz = -beta(t) z / 2 dt + sqrt(beta(t)) dW, beta linear in t on [0, 1];
z_t | z_0 ~ N(alpha_t z_0, sigma_t^2 I). The model predicts the noise (score = -eps / sigma_t) and is
trained by denoising score matching with weight sigma_t^2 on the score loss, i.e. the plain noise
regression ||eps_hat - eps||^2 (Ho et al. 2020): bounded for all t, unlike the likelihood weighting.
Times are drawn stratified over each minibatch (one uniform offset), which lowers the loss variance.

Parametrization. "eps": the network output is eps_hat. "v" (the default; Salimans & Ho 2022's
v-prediction): the network predicts v = alpha eps - sigma z_0 and eps_hat = sigma_t z_t + alpha_t v_hat.
For standardised data (unit variance; alpha^2 + sigma^2 = 1) sigma_t z_t is the exact noise predictor
of N(0, I) data, so the network only adds the departure from it, scaled by alpha_t -> 0 at the noise end.
This matters for log p through the ODE: its divergence multiplies the network's by beta(t) / (2 sigma_t)
(~10 near t = 1), and with eps-prediction the network's Jacobian noise there (where it must represent
the identity) dominated the log-density error in 16-D (measured in tests/test_prior.py's 16-D mixture).

FlowMatching (Lipman et al. 2023), conditional optimal-transport path: z_t = (1 - (1 - s) t) z_0 + t z_1
with z_0 ~ N(0, I) at t = 0 and data z_1 at t = 1; the network regresses the constant velocity
z_1 - (1 - s) z_0. No ODE solve while training.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import jax
import jax.numpy as jnp

from probgex.prior.nets import VectorFieldNet, guided


def _stratified_times(key: jax.Array, n: int, lo: float, hi: float) -> jax.Array:
    u = (jax.random.uniform(key) + jnp.arange(n) / n) % 1.0
    return lo + (hi - lo) * jax.random.permutation(jax.random.fold_in(key, 1), u)


def _keep(key: jax.Array, n: int, cond_dropout: float) -> jax.Array:
    return (jax.random.uniform(key, (n,)) >= cond_dropout).astype(jnp.float32)




class NoisePredictor:
    """eps_hat(z, t, c, keep) of a v-predicting network: sigma_t z + alpha_t v_hat (same call signature)."""

    def __init__(self, net: VectorFieldNet, sde: VPSDE):
        self.net, self.sde = net, sde

    def __call__(self, z, t, c, keep):
        a, s = self.sde.alpha_sigma(jnp.broadcast_to(t, z.shape[:-1]))
        return s[..., None] * z + a[..., None] * self.net(z, t, c, keep)


@dataclass(frozen=True)
class VPSDE:
    beta_min: float = 0.1
    beta_max: float = 20.0
    eps: float = 1e-3  # the data end: the SDE is truncated at t = eps (sigma_eps ~ 0.01)
    parametrization: Literal["v", "eps"] = "v"  # what the network outputs (module docstring; checked by the spec)

    def noise_predictor(self, net: VectorFieldNet):
        """The network as a noise predictor eps_hat(z, t, c, keep)."""
        return net if self.parametrization == "eps" else NoisePredictor(net, self)

    @property
    def t_noise(self) -> float:
        return 1.0

    @property
    def t_data(self) -> float:
        return self.eps

    def beta(self, t):
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def _int_beta(self, t):
        return self.beta_min * t + 0.5 * t**2 * (self.beta_max - self.beta_min)

    def alpha_sigma(self, t):
        ib = self._int_beta(t)
        return jnp.exp(-0.5 * ib), jnp.sqrt(-jnp.expm1(-ib))

    def loss(self, net: VectorFieldNet, key: jax.Array, z: jax.Array, c: jax.Array, cond_dropout: float):
        """Mean denoising score-matching loss (noise regression) of a minibatch."""
        kt, kn, kd = jax.random.split(key, 3)
        n = z.shape[0]
        t = _stratified_times(kt, n, self.eps, 1.0)
        noise = jax.random.normal(kn, z.shape, z.dtype)
        a, s = self.alpha_sigma(t)
        zt = a[:, None] * z + s[:, None] * noise
        pred = self.noise_predictor(net)(zt, t, c, _keep(kd, n, cond_dropout))
        return jnp.mean(jnp.sum((pred - noise) ** 2, axis=-1))

    def velocity(self, net: VectorFieldNet, z, t, c, guidance: float = 0.0):
        """Probability-flow ODE drift f - g^2 score / 2 = -beta z / 2 + beta eps_hat / (2 sigma)."""
        b = self.beta(t)
        _, s = self.alpha_sigma(t)
        return -0.5 * b * z + 0.5 * b * guided(self.noise_predictor(net), z, t, c, guidance) / s

    def reverse_drift(self, net: VectorFieldNet, z, t, c, guidance: float = 0.0):
        """Drift of the reverse-time SDE f - g^2 score (integrated with dt < 0)."""
        b = self.beta(t)
        _, s = self.alpha_sigma(t)
        return -0.5 * b * z + b * guided(self.noise_predictor(net), z, t, c, guidance) / s

    def diffusion(self, t):
        return jnp.sqrt(self.beta(t))


@dataclass(frozen=True)
class FlowMatching:
    sigma_min: float = 1e-4

    @property
    def t_noise(self) -> float:
        return 0.0

    @property
    def t_data(self) -> float:
        return 1.0

    def loss(self, net: VectorFieldNet, key: jax.Array, z: jax.Array, c: jax.Array, cond_dropout: float):
        """Mean conditional flow-matching loss of a minibatch."""
        kt, kn, kd = jax.random.split(key, 3)
        n = z.shape[0]
        t = _stratified_times(kt, n, 0.0, 1.0)
        z0 = jax.random.normal(kn, z.shape, z.dtype)
        zt = (1.0 - (1.0 - self.sigma_min) * t[:, None]) * z0 + t[:, None] * z
        target = z - (1.0 - self.sigma_min) * z0
        pred = net(zt, t, c, _keep(kd, n, cond_dropout))
        return jnp.mean(jnp.sum((pred - target) ** 2, axis=-1))

    def velocity(self, net: VectorFieldNet, z, t, c, guidance: float = 0.0):
        return guided(net, z, t, c, guidance)
