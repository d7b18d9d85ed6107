"""Every string-valued option's choices, defined once (no JAX: the likelihoods are the count-family registry's names): the spec's and the data layer's
validation, the latent priors, the learned-prior internals and the shell's options all read these."""

from probgex.models.families import NAMES as LIKELIHOODS  # noqa: E402  the count families' registry (no JAX)
DISPERSIONS = ("gene", "gene-group")
LIBRARIES = ("auto", "observed", "latent", "size_factors")  # library-size treatments
SAMPLE_QUALITIES = ("off", "on")  # the GLM's per-sample dispersion scales (probgex.models.quality)
COEF_PRIORS = ("fixed", "learned", "learned-interactions", "learned-interactions-per-gene",
               "learned-interactions-per-gene-level")  # the GLM's coefficient
# prior sds: spec.prior_scale, one fitted per formula term (ELBO), fitted per interaction term with the main effects at
# prior_scale, or per interaction term and gene (a per-gene sd under a half-Cauchy around a fitted sd per term), and
# with a scale per level (column) of the interaction from a population per term (an unseen level's drawn from it)
MEANS = ("glm", "mlp", "external")  # stage-1 mean predictors of the residual story
TRAINED_MEANS = ("glm", "mlp")  # the stage-1 predictors probgex trains itself
SCALES = ("counts", "fraction", "log1p_cp10k", "log_fraction")  # units of an external stage-1 prediction
EMPTY_MODES = ("warn", "error", "keep")  # what ingestion does with all-zero genes / observations
ANNOTATE_LAYERS = ("mean", "normalized")  # layers `annotate` can add (predictive mean, normalized expression)

MODELS = ("glm", "cvae", "residual")  # the shell's --model: the stories one picks
LATENT_KINDS = ("gaussian", "diffusion", "flow", "auto")  # latent priors of the cVAE (auto: the flow or the Gaussian,
# chosen after the VAE stage: probgex.inference.auto_prior)
LEARNED_PRIORS = ("diffusion", "flow")  # latent priors trained after the VAE
SAMPLERS = ("ode", "sde")  # how a diffusion prior draws
SDE_SOLVERS = ("euler", "heun")
PARAMETRIZATIONS = ("v", "eps")  # what a diffusion prior's network predicts
ODE_SOLVERS = ("tsit5", "dopri5", "euler")
EFFECTS = ("posterior", "shrunk")  # power curves: fold changes from the fit's posterior (None: a fixed lfc)
DE_TESTS = ("wald", "lrt")  # the DESeq2-style tests of power.de
DEVICE_DATA = ("auto", "always", "never")  # whether the SVI fit keeps the counts on the device
