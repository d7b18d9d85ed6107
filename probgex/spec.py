"""Model specification: what to fit, as validated plain data (no JAX).

A :class:`ModelSpec` is built from Python (``ModelSpec(...)`` or
``ModelSpec.create(...)``), from a dict or from TOML, and is validated the same
way on every path.  TOML layout::

    formula = "~ cluster_id + group_id"
    likelihood = "nb"
    dispersion = "gene"
    encoder = [128]
    decoder = [128]
    library = "auto"     # resolved when fitted: "size_factors" (bulk-like) or "observed"
    sample_quality = "off"  # GLM and cVAE: per-observation dispersion scales "on" | "off"
    prior_scale = 3.0
    coef_prior = "fixed"  # GLM: "learned" = one prior sd per formula term, fitted (empirical Bayes); "learned-interactions"
                          # | "learned-interactions-per-gene" | "learned-interactions-per-gene-level" (see ModelSpec.coef_prior)
    mean = "glm"        # absent = no stage-1 predictor; "glm" | "mlp" | "external" = residual story

    [latent]            # absent table = no latent (GLM story)
    kind = "gaussian"   # | "flow" | "diffusion" | "auto" (the flow or the Gaussian, chosen after the VAE stage)
    dim = 10
    hidden = []

A learned prior (kind = "diffusion" / "flow") adds its options as sub-tables ``[latent.net]``,
``[latent.training]``, ``[latent.ode]`` (and ``[latent.sde]``); the flat keys of files written before
them (``max_steps = ...`` in ``[latent]``) are still read.

Keys whose value is None (``dispersion_key``, ``layer``, ``latent``, ``mean``) are omitted.
"""

from __future__ import annotations

import math
import numbers
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import tomli_w

from probgex.choices import COEF_PRIORS, DISPERSIONS, LIBRARIES, LIKELIHOODS, MEANS, SAMPLE_QUALITIES
from probgex.errors import SpecError
from probgex._validate import check_sizes as _check_sizes
from probgex._validate import is_int as _is_int
from probgex._validate import unknown_keys_message as _unknown_keys_message
from probgex.latent import LATENT_TYPES, Auto, Gaussian, latent_from_dict

__all__ = ["LIKELIHOODS", "DISPERSIONS", "LIBRARIES", "ModelSpec"]



def _choices(values: tuple[str, ...]) -> str:
    return ", ".join(repr(v) for v in values)


def _check_choice(field: str, value: Any, allowed: tuple[str, ...]) -> None:
    if isinstance(value, str) and value in allowed:
        return
    hint = ""
    if isinstance(value, str):
        norm = value.strip().lower().replace("_", "-")
        if norm in allowed:
            hint = f" (did you mean {norm!r}?)"
    raise SpecError(f"unknown {field} {value!r}; allowed values: {_choices(allowed)}{hint}")


def _toml_lines(d: Mapping[str, Any]) -> str:
    """Flat key/value TOML; integer lists inline (``[64, 32]``), scalars escaped by tomli_w."""
    out = []
    for key, value in d.items():
        if isinstance(value, list):
            out.append(f"{key} = [{', '.join(str(int(v)) for v in value)}]\n")
        else:
            out.append(tomli_w.dumps({key: value}))
    return "".join(out)


@dataclass(frozen=True)
class ModelSpec:
    """A validated model specification (GLM story when ``latent`` is None, else conditional VAE)."""

    formula: str  # one-sided, e.g. "~ cluster_id + group_id"
    likelihood: str = "nb"
    latent: Gaussian | None = None  # None: the GLM story; Gaussian, Flow, Diffusion or Auto: the conditional VAE story
    dispersion: str = "gene"  # "gene" or "gene-group"
    dispersion_key: str | None = None  # obs column for "gene-group" (required then, forbidden otherwise)
    encoder: tuple[int, ...] = (128,)  # encoder MLP hidden sizes (cVAE only)
    decoder: tuple[int, ...] = (128,)  # decoder hidden sizes; () = linear decoder (cVAE only)
    # "auto" (resolved at fit time: "size_factors" for bulk-like counts, else "observed"; see
    # probgex.library.choose), "observed" (total counts), "latent", or "size_factors" (median of ratios)
    library: str = "auto"
    layer: str | None = None  # AnnData layer holding raw counts; None = X
    prior_scale: float = 3.0  # GLM: sd of the Normal prior on non-intercept coefficients (log scale)
    # GLM: "fixed" (every non-intercept coefficient ~ N(0, prior_scale^2)) or "learned": the coefficients of
    # each formula term (its group of design columns) ~ N(0, tau_t^2), tau_t fitted through the ELBO (empirical
    # Bayes, shared across genes), so a column never seen in training (an unseen combination's interaction)
    # keeps its learned prior as posterior (`probgex.inference.coef_prior`); "learned-interactions": only the
    # interaction terms' sds are fitted, main effects keep prior_scale (what predicting an unseen combination
    # with an interaction coded in full beside its main effects needs: the main effect is not shrunk);
    # "learned-interactions-per-gene": as "learned-interactions" but each gene g has its own sd tau_gt per
    # interaction term, tau_gt = tau_t lambda_gt, lambda_gt ~ half-Cauchy(0, 1) in the guide (log-normal per gene),
    # tau_t fitted by the ELBO, so a gene that interacts strongly in the seen levels gets a wide prior, hence a wide
    # posterior for an unseen combination's column, and a gene that never interacts a narrow one;
    # "learned-interactions-per-gene-level": as "learned-interactions-per-gene" and each column (level) j of an
    # interaction term also scales its sd, tau_t lambda_gt kappa_j, kappa_j ~ half-Cauchy(0, s_t) with s_t a latent
    # (`probgex.models.levels`): an unseen level's kappa is drawn from that population for all genes at once, so
    # a held-out type that may respond more (or less) than every seen one gets intervals that say so
    coef_prior: str = "fixed"
    mean: str | None = None  # residual story: stage-1 mean predictor "glm", "mlp" or "external"
    # a per-observation (sample, cell) scale of the NB overdispersion with a learned prior, integrated over
    # for a new observation (probgex.models.quality; GLM and cVAE stories): "off" (default) or "on"
    sample_quality: str = "off"

    # ------------------------------------------------------------------ validation
    def __post_init__(self) -> None:
        f = self.formula
        if not isinstance(f, str):
            raise SpecError(
                f"formula must be a string like '~ cluster_id + group_id'; got {f!r}"
            )
        if not f.lstrip().startswith("~"):
            raise SpecError(
                f"formula must be one-sided and start with '~' (e.g. '~ cluster_id + group_id'); "
                f"got {f!r}. The counts are the response: drop any left-hand side."
            )
        if not f.lstrip()[1:].strip():
            raise SpecError(
                f"formula {f!r} has no right-hand side; use '~ 1' for an intercept-only model"
            )

        _check_choice("likelihood", self.likelihood, LIKELIHOODS)

        if self.latent is not None and not isinstance(self.latent, LATENT_TYPES):
            raise SpecError(
                f"latent must be None (GLM story) or a Gaussian(...), Diffusion(...), Flow(...) or Auto(...) (cVAE "
                "story); "
                f"got {self.latent!r}. "
                "Use ModelSpec.create(..., latent=k) to pass a latent dimension as an int."
            )

        _check_choice("dispersion", self.dispersion, DISPERSIONS)
        key = self.dispersion_key
        if self.dispersion == "gene-group":
            if key is None:
                raise SpecError(
                    "dispersion='gene-group' needs dispersion_key, the obs column whose groups get "
                    "their own dispersion (e.g. dispersion_key='group_id')"
                )
            if not isinstance(key, str) or not key:
                raise SpecError(
                    f"dispersion_key must be a non-empty obs column name; got {key!r}"
                )
        elif key is not None:
            raise SpecError(
                f"dispersion_key={key!r} is only used with dispersion='gene-group'; "
                "either set dispersion='gene-group' or drop dispersion_key"
            )

        object.__setattr__(self, "encoder", _check_sizes(self.encoder, "encoder", "ModelSpec"))
        object.__setattr__(self, "decoder", _check_sizes(self.decoder, "decoder", "ModelSpec"))

        _check_choice("library", self.library, LIBRARIES)
        if self.library == "latent" and self.latent is None:
            raise SpecError(
                "library='latent' (a latent library size) needs the cVAE story: "
                "pass latent=Gaussian(...), or use library='observed' for the GLM"
            )

        if self.layer is not None and (not isinstance(self.layer, str) or not self.layer):
            raise SpecError(
                f"layer must be None (use X) or the non-empty name of an AnnData layer; got {self.layer!r}"
            )

        if self.mean is not None:
            _check_choice("mean", self.mean, MEANS)

        _check_choice("sample_quality", self.sample_quality, SAMPLE_QUALITIES)
        if isinstance(self.latent, Auto) and self.mean is not None:
            raise SpecError("latent=Auto(...) (the prior chosen after the VAE stage) is the cVAE's; the residual story "
                            f"(mean={self.mean!r}) takes latent=Gaussian(dim=...) (or an int)")

        _check_choice("coef_prior", self.coef_prior, COEF_PRIORS)
        if self.coef_prior != "fixed" and self.latent is not None:
            raise SpecError(f"coef_prior={self.coef_prior!r} sets the prior of the GLM's coefficients; the cVAE story has none "
                            "(its decoder takes the design as input): drop the latent or use coef_prior='fixed'")

        ps = self.prior_scale
        if (
            not isinstance(ps, numbers.Real)
            or isinstance(ps, bool)
            or not math.isfinite(ps)
            or ps <= 0
        ):
            raise SpecError(
                f"prior_scale must be a finite number > 0 (sd of the coefficient prior, e.g. 3.0); got {ps!r}"
            )
        object.__setattr__(self, "prior_scale", float(ps))

    # ------------------------------------------------------------------ views
    @property
    def story(self) -> str:
        """``"glm"`` when there is no latent, ``"cvae"`` with one; around a stage-1 ``mean``,
        ``"residual"`` with a latent and ``"residual_glm"`` without (a GLM with stage 1 as offset)."""
        if self.latent is None:
            return "glm" if self.mean is None else "residual_glm"
        return "cvae" if self.mean is None else "residual"

    # ------------------------------------------------------------------ constructors
    @classmethod
    def create(
        cls,
        formula: str,
        likelihood: str = "nb",
        latent: Gaussian | int | Mapping[str, Any] | None = None,
        **kw: Any,
    ) -> ModelSpec:
        """Python-facing constructor: ``latent`` may be an int k (= ``Auto(dim=k)`` for the cVAE, whose
        prior is then chosen after the VAE stage; ``Gaussian(dim=k)`` for the residual story), a latent
        spec (``Gaussian``, ``Flow``, ...), a latent dict, or None."""
        allowed = [f.name for f in fields(cls)]
        unknown = [k for k in kw if k not in allowed]
        if unknown:
            raise SpecError(_unknown_keys_message("model spec", unknown, allowed))
        if _is_int(latent):
            latent = Gaussian(dim=latent) if kw.get("mean") is not None else Auto(dim=latent)
        elif isinstance(latent, Mapping):
            latent = latent_from_dict(latent)
        return cls(formula=formula, likelihood=likelihood, latent=latent, **kw)

    # ------------------------------------------------------------------ dict
    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form (lists, not tuples; ``latent`` a dict or None; None values kept)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "latent":
                value = None if value is None else value.to_dict()
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelSpec:
        """Inverse of :meth:`to_dict`; missing optional keys take their defaults."""
        if not isinstance(d, Mapping):
            raise SpecError(f"a model spec must be a mapping; got {type(d).__name__}")
        allowed = [f.name for f in fields(cls)]
        unknown = [k for k in d if k not in allowed]
        if unknown:
            raise SpecError(_unknown_keys_message("model spec", unknown, allowed))
        if "formula" not in d:
            raise SpecError(
                "model spec is missing the required key 'formula' (e.g. formula = \"~ cluster_id\")"
            )
        kwargs = dict(d)
        latent = kwargs.get("latent")
        if latent is not None and not isinstance(latent, LATENT_TYPES):
            kwargs["latent"] = latent_from_dict(latent)
        return cls(**kwargs)

    # ------------------------------------------------------------------ TOML
    def to_toml(self) -> str:
        """TOML text; None values are omitted, the latent becomes a ``[latent]`` table."""
        d = {k: v for k, v in self.to_dict().items() if v is not None}
        latent = d.pop("latent", None)
        text = _toml_lines(d)
        if latent is not None:
            options = {k: latent.pop(k) for k in list(latent) if isinstance(latent[k], dict)}
            text += "\n[latent]\n" + _toml_lines(latent)
            for name, values in options.items():  # a learned prior's options: [latent.net], [latent.training], ...
                text += f"\n[latent.{name}]\n" + _toml_lines(values)
        return text

    @classmethod
    def from_toml(cls, text: str | bytes) -> ModelSpec:
        """Parse and validate TOML text produced by :meth:`to_toml` (or written by hand)."""
        if isinstance(text, (bytes, bytearray)):
            text = bytes(text).decode("utf-8")
        if not isinstance(text, str):
            raise SpecError(f"from_toml expects TOML text (str); got {type(text).__name__}")
        try:
            d = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise SpecError(f"malformed TOML model spec: {e}") from e
        return cls.from_dict(d)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`to_toml` to ``path`` (UTF-8)."""
        with open(path, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(self.to_toml())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ModelSpec:
        """Read a spec written by :meth:`save` (or any TOML file in the same layout)."""
        with open(path, "rb") as fh:
            raw = fh.read()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise SpecError(f"model spec file {os.fspath(path)!r} is not UTF-8 text: {e}") from e
        try:
            return cls.from_toml(text)
        except SpecError as e:
            raise SpecError(f"{os.fspath(path)}: {e}") from e
