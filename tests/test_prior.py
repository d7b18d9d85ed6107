"""The learned latent priors against known truths.

Closed forms first (no training): with the exact noise predictor of Gaussian data, the probability-flow
ODE and both reverse-SDE solvers must reproduce the data's mean and sd, and the ODE log-density of a
linear flow must equal the Gaussian it pushes N(0, I) to. Then trained priors on a conditional 2-D
Gaussian mixture (two modes per condition; 16-D in the slow test): samples are compared with the target
by energy distance, with the threshold stated relative to the energy distance between two independent
target samples (and a moment-matched Gaussian, the prior the learned one replaces, must fail it); the
ODE log-likelihood is compared with the true log-density; exact-trace and Hutchinson log-densities agree.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp

from probgex.latent import LATENT_KINDS
from probgex.prior import LearnedPrior
from probgex.prior.options import ODE as ODEOptions
from probgex.prior.options import SDE as SDEOptions
from probgex.prior.options import Network, Training
from probgex.prior.dynamics import VPSDE
from probgex.prior.ode import ode_log_prob, ode_sample
from probgex.prior.sde_sampler import sde_sample


# ----------------------------------------------------------------------------- a conditional mixture
class Mixture:
    """Per condition k, an equal mixture of isotropic Gaussians N(means[k][j], sd^2 I)."""

    def __init__(self, dim: int, n_cond: int, n_comp: int, sd: float, seed: int):
        rng = np.random.default_rng(seed)
        self.means = rng.normal(0, 2.0, (n_cond, n_comp, dim))
        self.dim, self.n_cond, self.sd = dim, n_cond, sd

    def sample(self, rng, cond: np.ndarray) -> np.ndarray:
        comp = rng.integers(0, self.means.shape[1], len(cond))
        return self.means[cond, comp] + self.sd * rng.normal(size=(len(cond), self.dim))

    def log_prob(self, z: np.ndarray, cond: np.ndarray) -> np.ndarray:
        d2 = ((z[:, None, :] - self.means[cond]) ** 2).sum(-1)
        log_comp = -0.5 * d2 / self.sd**2 - self.dim * np.log(self.sd) - 0.5 * self.dim * np.log(2 * np.pi)
        return logsumexp(log_comp, axis=1) - np.log(self.means.shape[1])


def energy_distance(x: np.ndarray, y: np.ndarray) -> float:
    d = lambda a, b: np.sqrt(((a[:, None] - b[None]) ** 2).sum(-1)).mean()  # noqa: E731
    return float(2 * d(x, y) - d(x, x) - d(y, y))


def one_hot(cond, k):
    return np.eye(k, dtype=np.float32)[cond]


# ----------------------------------------------------------------------------- closed forms
class ExactGaussianEps:
    """The exact noise predictor of the VP-SDE for data N(m, s^2 I): eps = sigma (z - alpha m) / var_t."""

    def __init__(self, sde: VPSDE, m: np.ndarray, s: float):
        self.sde, self.m, self.s = sde, jnp.asarray(m, jnp.float32), s

    def __call__(self, z, t, c, keep):
        a, sig = self.sde.alpha_sigma(jnp.broadcast_to(t, z.shape[:-1]))
        var = a**2 * self.s**2 + sig**2
        return (sig / var)[..., None] * (z - a[..., None] * self.m)


class ExactGaussianV(ExactGaussianEps):
    """The exact v-predictor of the same data: v = (eps - sigma z) / alpha."""

    def __call__(self, z, t, c, keep):
        a, sig = self.sde.alpha_sigma(jnp.broadcast_to(t, z.shape[:-1]))
        return (super().__call__(z, t, c, keep) - sig[..., None] * z) / a[..., None]


@pytest.mark.parametrize("parametrization", ["eps", "v"])
@pytest.mark.parametrize("sampler", ["ode", "sde-euler", "sde-heun"])
def test_samplers_reproduce_gaussian_data_with_the_exact_score(sampler, parametrization):
    sde, m, s, n = VPSDE(parametrization=parametrization), np.array([1.5, -0.5, 3.0]), 0.7, 4000
    exact = ExactGaussianEps if parametrization == "eps" else ExactGaussianV
    net, c = exact(sde, m, s), jnp.zeros((n, 1))
    key = jax.random.PRNGKey(0)
    if sampler == "ode":
        z = ode_sample(sde.velocity, net, key, c, 3, sde.t_noise, sde.t_data, ODEOptions())
    else:
        z = sde_sample(sde, net, key, c, 3, SDEOptions(solver=sampler[4:], n_steps=100))
    z = np.asarray(z)
    se_mean, se_sd = s / np.sqrt(n), s / np.sqrt(2 * n)
    np.testing.assert_allclose(z.mean(0), m, atol=4 * se_mean + 0.01)
    np.testing.assert_allclose(z.std(0), s, atol=4 * se_sd + 0.02)


def test_v_parametrization_gives_the_exact_log_density_of_gaussian_data():
    """The probability-flow ODE with the exact v-predictor (and, the same field, the exact noise predictor)
    scores Gaussian data at its true log-density; reading a v-predictor as a noise predictor does not."""
    m, s = np.array([0.5, -0.3, 0.2]), 0.7  # near-standardised, as the learned prior's latents are
    z = np.random.default_rng(2).normal(m, s, (40, 3)).astype(np.float32)
    truth = (-0.5 * ((z - m) ** 2).sum(-1) / s**2 - 3 * np.log(s) - 1.5 * np.log(2 * np.pi))
    opts, c = ODEOptions(rtol=1e-5, atol=1e-5), jnp.zeros((40, 1))

    def lp(sde, net):
        return np.asarray(ode_log_prob(sde.velocity, net, jnp.asarray(z), c, sde.t_noise, sde.t_data, opts))

    v_sde, eps_sde = VPSDE(parametrization="v"), VPSDE(parametrization="eps")
    # what remains (~0.01 nat, the same at rtol 1e-7) is the VP-SDE's truncation: at t = 1 the data are
    # not exactly N(0, I) (alpha_1 = 0.0065), and at t = 1e-3 they are blurred by sigma ~ 0.01
    np.testing.assert_allclose(lp(v_sde, ExactGaussianV(v_sde, m, s)), truth, atol=0.02)
    np.testing.assert_allclose(lp(eps_sde, ExactGaussianEps(eps_sde, m, s)), truth, atol=0.02)
    assert np.abs(lp(eps_sde, ExactGaussianV(eps_sde, m, s)) - truth).mean() > 1.0


def test_ode_log_density_of_a_linear_flow_is_the_pushed_gaussian():
    """dz/dt = a z from N(0, I) at t = 0 gives N(0, e^{2a} I) at t = 1: the ODE log-density must match."""
    a, dim = 0.6, 3
    velocity = lambda net, z, t, c, w: a * z * (1.0 + 0.0 * t)  # noqa: E731
    z = np.random.default_rng(0).normal(0, np.exp(a), (50, dim)).astype(np.float32)
    truth = (-0.5 * (z**2).sum(-1) * np.exp(-2 * a) - dim * a - 0.5 * dim * np.log(2 * np.pi))
    opts = ODEOptions(rtol=1e-5, atol=1e-5)
    exact = ode_log_prob(velocity, None, jnp.asarray(z), jnp.zeros((50, 1)), 0.0, 1.0, opts, trace="exact")
    np.testing.assert_allclose(np.asarray(exact), truth, atol=1e-3)
    # Hutchinson with Rademacher probes is exact for a diagonal Jacobian
    hutch = ode_log_prob(velocity, None, jnp.asarray(z), jnp.zeros((50, 1)), 0.0, 1.0, opts,
                         trace="hutchinson", key=jax.random.PRNGKey(1))
    np.testing.assert_allclose(np.asarray(hutch), truth, atol=1e-3)


def test_ode_sampling_and_scoring_are_inverse():
    """Samples of the linear flow have the pushed-forward sd; a key is required for Hutchinson."""
    velocity = lambda net, z, t, c, w: -0.5 * z  # noqa: E731
    z = ode_sample(velocity, None, jax.random.PRNGKey(0), jnp.zeros((4000, 1)), 2, 0.0, 1.0, ODEOptions())
    np.testing.assert_allclose(np.asarray(z).std(0), np.exp(-0.5), rtol=0.05)
    with pytest.raises(ValueError, match="PRNG key"):
        ode_log_prob(velocity, None, z, jnp.zeros((4000, 1)), 0.0, 1.0, ODEOptions(), trace="hutchinson")


# ----------------------------------------------------------------------------- trained priors, 2-D
MIX2 = Mixture(dim=2, n_cond=2, n_comp=2, sd=0.5, seed=3)


@pytest.fixture(scope="module", params=["diffusion", "flow"])
def trained_2d(request):
    rng = np.random.default_rng(0)
    cond = rng.integers(0, 2, 2000)
    z = MIX2.sample(rng, cond)
    prior = LearnedPrior(LATENT_KINDS[request.param](dim=2, net=Network(hidden=(128, 128))), 2, seed=0)
    config = Training(max_steps=3000, eval_every=250, learning_rate=4e-3)
    params, hist = prior.fit(jax.random.PRNGKey(0), z, one_hot(cond, 2), config=config, progress=False)
    return prior, params, hist


def _reference_energy(mix: Mixture, cond: np.ndarray, repeats: int = 4) -> float:
    rng = np.random.default_rng(123)
    return float(np.mean([energy_distance(mix.sample(rng, cond), mix.sample(rng, cond)) for _ in range(repeats)]))


@pytest.mark.parametrize("sampler", ["ode", "sde"])
def test_learned_prior_samples_match_the_2d_mixture(trained_2d, sampler):
    prior, params, hist = trained_2d
    if sampler == "sde" and prior.kind == "flow":
        pytest.skip("the reverse SDE is the diffusion prior's sampler")
    assert hist.heldout[-1] < hist.heldout[0]
    rng = np.random.default_rng(7)
    draw = jax.jit(lambda key, c: prior.sample(params, key, c, sampler=sampler))
    for k in range(2):  # each condition separately: the prior must be conditional
        cond = np.full(600, k)
        sample = np.asarray(draw(jax.random.PRNGKey(k), one_hot(cond, 2)))
        ref = _reference_energy(MIX2, cond)
        target = MIX2.sample(rng, cond)
        assert energy_distance(sample, target) < 4 * ref, (energy_distance(sample, target), ref)
        # the negative control: the moment-matched Gaussian (what a Gaussian prior can do) fails the same bound
        gauss = rng.multivariate_normal(target.mean(0), np.cov(target.T), 600)
        assert energy_distance(gauss, MIX2.sample(rng, cond)) > 4 * ref
        # and the other condition's target is far
        assert energy_distance(sample, MIX2.sample(rng, np.full(600, 1 - k))) > 20 * ref


def test_learned_prior_log_density_matches_the_2d_mixture(trained_2d):
    prior, params, _ = trained_2d
    rng = np.random.default_rng(11)
    cond = rng.integers(0, 2, 300)
    z = MIX2.sample(rng, cond)
    c = one_hot(cond, 2)
    truth = MIX2.log_prob(z, cond)
    exact = np.asarray(jax.jit(lambda z, c: prior.log_prob(params, z, c, trace="exact"))(z, c))
    err = exact - truth
    # the true log-density spans several nats over these points; a learned model is within a few tenths
    assert np.ptp(truth) > 4
    assert abs(err.mean()) < 0.2 and np.median(np.abs(err)) < 0.3, (err.mean(), np.median(np.abs(err)))
    assert np.corrcoef(exact, truth)[0, 1] > 0.95
    # Hutchinson (32 Rademacher probes) agrees with the exact trace: unbiased, small spread
    hutch = np.asarray(jax.jit(lambda z, c, k: prior.log_prob(params, z, c, trace="hutchinson", key=k, n_probes=32))(
        z, c, jax.random.PRNGKey(5)))
    diff = hutch - exact
    assert abs(diff.mean()) < 4 * diff.std() / np.sqrt(len(diff)) + 0.01
    assert np.mean(np.abs(diff)) < 0.1


# ----------------------------------------------------------------------------- 16-D (slow)
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["diffusion", "flow"])
def test_learned_prior_on_a_16d_mixture(kind):
    """Both priors with their default training and ODE options. The diffusion prior passes with the
    v-parametrization (its default): measured (Nov 2026, 2 CPU cores) correlation 0.948, mean error -0.49,
    median |error| 0.66 nat (exact trace; 0.939 with Hutchinson, 16 probes); a second seed 0.949. With noise
    prediction ("eps") the correlation was 0.896 (0.914 with a second seed): the network's Jacobian noise
    near t = 1, amplified by beta / (2 sigma) in the divergence, dominated the error (measured by swapping
    the learned noise predictor for the exact one of the mixture on parts of [t_data, 1]: with the learned
    one on t > 0.6 only, the error sd was 0.61 nat with "eps" and 0.12 with "v")."""
    mix = Mixture(dim=16, n_cond=3, n_comp=3, sd=0.6, seed=5)
    rng = np.random.default_rng(0)
    cond = rng.integers(0, 3, 6000)
    prior = LearnedPrior(LATENT_KINDS[kind](dim=16, net=Network(hidden=(256, 256, 256))), 3, seed=0)
    params, _ = prior.fit(jax.random.PRNGKey(0), mix.sample(rng, cond), one_hot(cond, 3),
                          config=Training(max_steps=12000), progress=False)
    draw = jax.jit(lambda key, c: prior.sample(params, key, c))
    for k in range(3):
        cond_k = np.full(800, k)
        sample = np.asarray(draw(jax.random.PRNGKey(k), one_hot(cond_k, 3)))
        ref = _reference_energy(mix, cond_k)
        assert energy_distance(sample, mix.sample(rng, cond_k)) < 4 * ref
    cond = rng.integers(0, 3, 300)
    z = mix.sample(rng, cond)
    truth = mix.log_prob(z, cond)
    # the exact trace (the "auto" choice at dim 16): Hutchinson noise is tested in 2-D, not here
    lp = np.asarray(jax.jit(lambda z, c: prior.log_prob(params, z, c, trace="exact"))(z, one_hot(cond, 3)))
    # 16 dimensions: a tolerance of about 0.1 nat per dimension
    assert abs((lp - truth).mean()) < 1.6 and np.median(np.abs(lp - truth)) < 2.0
    assert np.corrcoef(lp, truth)[0, 1] > 0.9
