"""ModelSpec / Gaussian: validation, dict and TOML round trips, save/load."""

from __future__ import annotations

import itertools
import math
import ast
import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from probgex.errors import SpecError
from probgex.latent import Auto, Gaussian, latent_from_dict
from probgex.spec import LIKELIHOODS, ModelSpec


def roundtrip(spec: ModelSpec) -> None:
    assert ModelSpec.from_toml(spec.to_toml()) == spec
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    # The dict view is plain Python (lists, not tuples) and TOML-compatible.
    assert ModelSpec.from_dict(tomllib.loads(spec.to_toml())) == spec


# ---------------------------------------------------------------- valid grid

GRID = [
    dict(
        likelihood=lik,
        latent=lat,
        dispersion=disp,
        dispersion_key=("group_id" if disp == "gene-group" else None),
        library=lib,
        layer=layer,
    )
    for lik, lat, disp, lib, layer in itertools.product(
        LIKELIHOODS,
        [None, Gaussian(), Gaussian(dim=3, hidden=(16, 8))],
        ["gene", "gene-group"],
        ["observed", "latent"],
        [None, "counts"],
    )
    if not (lib == "latent" and lat is None)
]


@pytest.mark.parametrize("kw", GRID)
def test_grid_roundtrip(kw):
    spec = ModelSpec("~ cluster_id + group_id", **kw)
    roundtrip(spec)
    assert spec.story == ("glm" if kw["latent"] is None else "cvae")


def test_defaults_and_toml_layout():
    spec = ModelSpec("~ cluster_id + group_id")
    assert spec.likelihood == "nb" and spec.latent is None and spec.story == "glm"
    assert spec.encoder == (128,) and spec.decoder == (128,) and spec.prior_scale == 3.0
    text = spec.to_toml()
    d = tomllib.loads(text)
    assert "latent" not in d and "layer" not in d and "dispersion_key" not in d
    assert d["formula"] == "~ cluster_id + group_id" and d["likelihood"] == "nb"

    cvae = ModelSpec("~ x", latent=Gaussian(dim=4), decoder=())
    d = tomllib.loads(cvae.to_toml())
    assert d["latent"] == {"kind": "gaussian", "dim": 4, "hidden": []}
    assert d["decoder"] == []
    roundtrip(cvae)


def test_lists_become_tuples_and_ints_floats():
    spec = ModelSpec("~ x", latent=Gaussian(dim=2, hidden=[5, 6]), encoder=[64, 32], decoder=[])
    assert spec.encoder == (64, 32) and spec.decoder == () and spec.latent.hidden == (5, 6)
    assert isinstance(spec.encoder, tuple)
    spec2 = ModelSpec("~ x", prior_scale=2)
    assert spec2.prior_scale == 2.0 and isinstance(spec2.prior_scale, float)
    hash(spec)  # frozen + tuples -> hashable


def test_handwritten_toml():
    text = """
formula = "~ cluster_id"
likelihood = "zinb"
dispersion = "gene-group"
dispersion_key = "batch"
library = "latent"

[latent]
kind = "gaussian"
dim = 8
hidden = [32]
"""
    spec = ModelSpec.from_toml(text)
    assert spec == ModelSpec(
        "~ cluster_id",
        likelihood="zinb",
        latent=Gaussian(dim=8, hidden=(32,)),
        dispersion="gene-group",
        dispersion_key="batch",
        library="latent",
    )
    assert ModelSpec.from_toml('formula = "~ 1"') == ModelSpec("~ 1")


def test_create():
    assert ModelSpec.create("~ x", latent=5).latent == Auto(dim=5)  # the cVAE's default prior (auto_prior)
    assert ModelSpec.create("~ x", latent=5, mean="glm").latent == Gaussian(dim=5)
    assert ModelSpec.create("~ x", "poisson", Gaussian(dim=2)).latent == Gaussian(dim=2)
    assert ModelSpec.create("~ x", latent={"kind": "gaussian", "dim": 3}).latent == Gaussian(dim=3)
    assert ModelSpec.create("~ x").story == "glm"
    assert ModelSpec.create("~ x", latent=4, library="latent").library == "latent"
    with pytest.raises(SpecError, match="Auto.dim"):
        ModelSpec.create("~ x", latent=0)
    with pytest.raises(SpecError, match="latent must be None"):
        ModelSpec.create("~ x", latent=True)
    with pytest.raises(SpecError, match=r"'likelyhood' \(did you mean 'likelihood'\?\)"):
        ModelSpec.create("~ x", likelyhood="nb")


def test_save_load(tmp_path):
    spec = ModelSpec("~ a + b", likelihood="zinb", latent=Gaussian(dim=6, hidden=(12,)), layer="raw")
    path = tmp_path / "spec.toml"
    spec.save(path)
    assert ModelSpec.load(path) == spec
    assert ModelSpec.load(str(path)) == spec

    bad = tmp_path / "bad.toml"
    bad.write_text('formula = "~ x"\nlikelihood = \n')
    with pytest.raises(SpecError, match=r"bad\.toml.*malformed TOML.*line 2"):
        ModelSpec.load(bad)
    invalid = tmp_path / "invalid.toml"
    invalid.write_text('formula = "~ x"\nlikelihood = "gamma"\n')
    with pytest.raises(SpecError, match=r"invalid\.toml.*unknown likelihood 'gamma'"):
        ModelSpec.load(invalid)


# ---------------------------------------------------------------- invalid cases

INVALID = [
    # (kwargs, message substring)
    (dict(formula=3), "formula must be a string"),
    (dict(formula="y ~ x"), "start with '~'"),
    (dict(formula="cluster_id"), "got 'cluster_id'"),
    (dict(formula="~  "), "'~ 1'"),
    (dict(likelihood="gamma"), "unknown likelihood 'gamma'; allowed values: 'poisson', 'nb', 'zinb'"),
    (dict(likelihood="NB"), "did you mean 'nb'"),
    (dict(likelihood=None), "unknown likelihood None"),
    (dict(dispersion="cell"), "unknown dispersion 'cell'; allowed values: 'gene', 'gene-group'"),
    (dict(dispersion="gene_group", dispersion_key="g"), "did you mean 'gene-group'"),
    (dict(dispersion="gene-group"), "needs dispersion_key"),
    (dict(dispersion="gene-group", dispersion_key=""), "dispersion_key must be a non-empty"),
    (dict(dispersion="gene-group", dispersion_key=5), "got 5"),
    (dict(dispersion_key="group_id"), "dispersion_key='group_id' is only used with dispersion='gene-group'"),
    (dict(encoder=(0,)), "ModelSpec.encoder must contain positive ints"),
    (dict(encoder=(64, -1)), "got -1"),
    (dict(decoder=(2.5,)), "ModelSpec.decoder must contain positive ints (layer widths >= 1); got 2.5"),
    (dict(decoder=(True,)), "got True"),
    (dict(encoder=128), "ModelSpec.encoder must be a sequence of positive ints"),
    (dict(encoder="128"), "ModelSpec.encoder must be a sequence"),
    (dict(library="sizefactors"), "unknown library 'sizefactors'; allowed values: 'auto', 'observed', 'latent', 'size_factors'"),
    (dict(library="latent"), "latent library size) needs the cVAE story: pass latent=Gaussian(...)"),
    (dict(layer=""), "layer must be None"),
    (dict(layer=1), "got 1"),
    (dict(prior_scale=0), "prior_scale must be a finite number > 0"),
    (dict(prior_scale=-1.0), "got -1.0"),
    (dict(prior_scale=math.inf), "got inf"),
    (dict(prior_scale=math.nan), "got nan"),
    (dict(prior_scale="3"), "got '3'"),
    (dict(prior_scale=True), "got True"),
    (dict(latent=10), "Use ModelSpec.create"),
    (dict(latent={"kind": "gaussian"}), "latent must be None (GLM story) or a Gaussian"),
]


@pytest.mark.parametrize(("kw", "msg"), INVALID)
def test_invalid_constructor(kw, msg):
    kw = {"formula": "~ x", **kw}
    with pytest.raises(SpecError) as ei:
        ModelSpec(**kw)
    assert msg in str(ei.value)
    assert isinstance(ei.value, ValueError)


@pytest.mark.parametrize(("kw", "msg"), [c for c in INVALID if c[0].get("latent") is None])
def test_invalid_from_dict(kw, msg):
    # Same checks fire through from_dict (nan/inf included, which TOML can also express).
    d = {"formula": "~ x", **kw}
    with pytest.raises(SpecError) as ei:
        ModelSpec.from_dict(d)
    assert msg in str(ei.value)


@pytest.mark.parametrize(
    ("kw", "msg"),
    [
        (dict(dim=0), "Gaussian.dim must be an int >= 1"),
        (dict(dim=2.0), "got 2.0"),
        (dict(dim=True), "got True"),
        (dict(hidden=(0,)), "Gaussian.hidden must contain positive ints"),
        (dict(hidden=(4, "8")), "got '8'"),
        (dict(hidden=7), "Gaussian.hidden must be a sequence"),
    ],
)
def test_invalid_gaussian(kw, msg):
    with pytest.raises(SpecError) as ei:
        Gaussian(**kw)
    assert msg in str(ei.value)


def test_gaussian_dict():
    g = Gaussian(dim=3, hidden=[4])
    assert g.hidden == (4,) and g.kind == "gaussian"
    assert g.to_dict() == {"kind": "gaussian", "dim": 3, "hidden": [4]}
    assert Gaussian.from_dict(g.to_dict()) == g
    assert Gaussian.from_dict({"dim": 3, "hidden": [4]}) == g
    assert latent_from_dict(g.to_dict()) == g
    with pytest.raises(SpecError, match=r"unknown key in latent: 'dims' \(did you mean 'dim'\?\)"):
        Gaussian.from_dict({"dims": 3})
    with pytest.raises(SpecError, match="does not match Gaussian"):
        Gaussian.from_dict({"kind": "laplace"})


def test_unknown_keys_named():
    with pytest.raises(SpecError) as ei:
        ModelSpec.from_dict({"formula": "~ x", "likelyhood": "nb", "foo": 1})
    msg = str(ei.value)
    assert "unknown keys in model spec" in msg
    assert "'likelyhood' (did you mean 'likelihood'?)" in msg and "'foo'" in msg
    assert "allowed keys: formula, likelihood" in msg

    with pytest.raises(SpecError, match=r"'likelyhood' \(did you mean 'likelihood'\?\)"):
        ModelSpec.from_toml('formula = "~ x"\nlikelyhood = "nb"\n')
    with pytest.raises(SpecError, match=r"unknown key in latent: 'hiden' \(did you mean 'hidden'\?\)"):
        ModelSpec.from_toml('formula = "~ x"\n[latent]\nkind = "gaussian"\nhiden = [3]\n')


def test_latent_table_errors():
    with pytest.raises(SpecError, match="unknown latent kind 'laplace'; allowed kinds: 'gaussian'"):
        ModelSpec.from_toml('formula = "~ x"\n[latent]\nkind = "laplace"\ndim = 3\n')
    with pytest.raises(SpecError, match="needs a 'kind' key"):
        ModelSpec.from_toml('formula = "~ x"\n[latent]\ndim = 3\n')
    with pytest.raises(SpecError, match="latent must be a table"):
        ModelSpec.from_toml('formula = "~ x"\nlatent = 5\n')
    with pytest.raises(SpecError, match="Gaussian.dim must be an int >= 1"):
        ModelSpec.from_toml('formula = "~ x"\n[latent]\nkind = "gaussian"\ndim = 0\n')


def test_from_dict_and_toml_structure_errors():
    with pytest.raises(SpecError, match="missing the required key 'formula'"):
        ModelSpec.from_dict({"likelihood": "nb"})
    with pytest.raises(SpecError, match="missing the required key 'formula'"):
        ModelSpec.from_toml("")
    with pytest.raises(SpecError, match="must be a mapping"):
        ModelSpec.from_dict(["formula"])
    with pytest.raises(SpecError, match="expects TOML text"):
        ModelSpec.from_toml(3)
    with pytest.raises(SpecError, match="got inf"):
        ModelSpec.from_toml('formula = "~ x"\nprior_scale = inf\n')


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ('formula = "~ x"\nlikelihood = \n', "line 2"),
        ('formula = "~ x\n', "line 1"),
        ('formula = "~ x"\n[latent\nkind = "gaussian"\n', "line 2"),
        ('formula = "~ x"\nformula = "~ y"\n', "line 2"),
    ],
)
def test_malformed_toml(text, line):
    with pytest.raises(SpecError) as ei:
        ModelSpec.from_toml(text)
    assert "malformed TOML model spec" in str(ei.value)
    assert line in str(ei.value)
    assert isinstance(ei.value.__cause__, tomllib.TOMLDecodeError)


def test_frozen():
    spec = ModelSpec("~ x")
    with pytest.raises(AttributeError):
        spec.likelihood = "poisson"  # type: ignore[misc]


def test_no_jax_import():
    # Checked on the source (probgex/__init__ may legitimately import JAX).
    import probgex.latent
    import probgex.spec

    for mod in (probgex.spec, probgex.latent):
        tree = ast.parse(Path(mod.__file__).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                roots = [(node.module or "").split(".")[0]]
            else:
                continue
            assert not {"jax", "jaxlib", "numpyro", "flax"} & set(roots), (mod.__name__, roots)


# ---------------------------------------------------------------- property-based round trip

sizes = st.lists(st.integers(1, 4096), max_size=4).map(tuple)
names = st.text(min_size=1, max_size=12)
latents = st.none() | st.builds(Gaussian, dim=st.integers(1, 256), hidden=sizes)


@st.composite
def specs(draw):
    latent = draw(latents)
    dispersion = draw(st.sampled_from(["gene", "gene-group"]))
    return ModelSpec(
        formula=draw(st.text(max_size=20).map(lambda s: "~ 1" + s)),
        likelihood=draw(st.sampled_from(LIKELIHOODS)),
        latent=latent,
        dispersion=dispersion,
        dispersion_key=draw(names) if dispersion == "gene-group" else None,
        encoder=draw(sizes),
        decoder=draw(sizes),
        library=draw(st.sampled_from(["observed", "latent"] if latent else ["observed"])),
        layer=draw(st.none() | names),
        prior_scale=draw(
            st.floats(min_value=0, exclude_min=True, allow_infinity=False, allow_nan=False)
        ),
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs())
def test_property_roundtrip(spec):
    roundtrip(spec)
