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


SHELL_BAD_INPUT = [
    ["check", "{m}", "--data", "{x}", "--out", "{o}", "--n-samples", "0"],
    ["check", "{m}", "--data", "{x}", "--out", "{o}", "--seed", "-1"],
    ["power", "{m}", "--contrast", "g:a:b", "--out", "{o}", "--fdr", "2"],
    ["power", "{m}", "--contrast", "g:a:b", "--out", "{o}", "--n", "1,3"],
    ["power", "{m}", "--contrast", "g:a:b", "--out", "{o}", "--effects", "posterior", "--reference-n", "1"],
    ["explain", "{m}", "--data", "{x}", "--out", "{o}", "--level", "2"],
    ["demo", "--out", "{o}", "--seed", "-1"],
    ["demo", "--out", "{o}", "--max-epochs", "0"],
    ["fit", "{x}", "--out", "{o}.npz", "--devices", "0"],
]


def test_shell_input_validation_runs_before_any_jax_import(tmp_path):
    """`probgex check`, `power`, `demo`, `explain`, `fit` refuse bad options (exit code 2, one message) with the
    JAX stack still unloaded, one fresh interpreter for all: the checks run before the heavy imports."""
    (tmp_path / "m.npz").write_bytes(b"not read")
    (tmp_path / "x.h5ad").write_bytes(b"not read")
    runs = [[a.format(m=tmp_path / "m.npz", x=tmp_path / "x.h5ad", o=tmp_path / "out") for a in argv]
            for argv in SHELL_BAD_INPUT]
    code = ("from typer.testing import CliRunner; from probgex.cli import app\n"
            f"for args in {runs!r}:\n"
            "    r = CliRunner().invoke(app, args)\n"
            "    assert r.exit_code == 2 and r.output.startswith('error: '), (args, r.output)")
    assert _loaded(code) == []
