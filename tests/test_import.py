"""A light import: the package, its spec and data layers and the shell load no JAX stack (checked on
`sys.modules` in a fresh interpreter), and every public name still resolves."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import probgex

HEAVY = ("jax", "numpyro", "flax", "diffrax", "arviz", "matplotlib", "optax", "xarray")


def _loaded(code: str) -> list[str]:
    probe = f"{code}; import sys; print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    root = str(Path(probgex.__file__).parents[1])  # the probgex under test, not another installed one
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=env)
    return eval(out.stdout.strip().splitlines()[-1])


def test_light_modules_load_no_jax_stack():
    assert _loaded("import probgex, probgex.spec, probgex.data, probgex.errors, probgex.latent, "
                   "probgex.choices, probgex.cli") == []


def test_spec_validation_loads_no_jax_stack():
    code = ("import probgex as pg; s = pg.ModelSpec.create('~ a', 'nb', latent=3); "
            "pg.ModelSpec.from_toml(s.to_toml())\n"
            "try:\n    pg.ModelSpec('~ a', likelihood='gamma')\nexcept pg.SpecError: pass")
    assert _loaded(code) == []


def test_probe_sees_a_heavy_import():  # the probe itself can fail
    assert "jax" in _loaded("import probgex.rng")


@pytest.mark.parametrize("name", probgex.__all__)
def test_every_public_name_resolves(name):
    import probgex as pg

    value = getattr(pg, name)
    assert value is not None
    exec(f"from probgex import {name} as imported", ns := {})
    assert ns["imported"] is value
    assert name in dir(pg)


def test_public_names_are_the_defining_objects():
    import probgex as pg
    import probgex.data
    import probgex.fit
    import probgex.power

    assert pg.Model is probgex.fit.Model and pg.CountData is probgex.data.CountData
    assert pg.power is probgex.power and pg.load is probgex.fit.load
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        pg.Nope  # noqa: B018
