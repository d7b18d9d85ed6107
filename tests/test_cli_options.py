"""Every shell option refuses a bad value with exit code 2 and a one-line message, never a traceback,
and before any model or data is read (the model file here is not one: reaching it would say so)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from probgex.cli import app

BAD = {  # command -> bad option values, each with a word the message must contain
    "fit": [(["--max-epochs", "0"], "max_epochs"), (["--batch-size", "0"], "batch_size"),
            (["--holdout", "1.5"], "holdout"), (["--patience", "0"], "patience"),
            (["--learning-rate", "-1"], "learning_rate"), (["--devices", "0"], "devices"),
            (["--memory-budget", "-1"], "--memory-budget"), (["--memory-budget", "nan"], "--memory-budget"),
            (["--seed", "-1"], "--seed"), (["--likelihood", "gamma"], "likelihood"), (["--library", "foo"], "library"),
            (["--sample-quality", "maybe"], "sample_quality"), (["--formula", "y ~ g"], "one-sided"),
            (["--coef-prior", "maybe"], "coef_prior"), (["--model", "cvae", "--coef-prior", "learned"], "coef_prior"),
            (["--model", "cvae", "--coef-prior", "learned-interactions-per-gene"], "cVAE"),
            (["--model", "cvae", "--latent-dim", "0"], "dim"),
            (["--model", "cvae", "--prior", "flow", "--prior-steps", "0"], "--prior-steps"),
            (["--prior-steps", "5"], "--prior-steps"),
            (["--num-processes", "0", "--coordinator", "h:1"], "--num-processes")],
    "predict": [(["--n-samples", "0"], "--n-samples"), (["--levels", "1.5"], "--levels"), (["--levels", "abc"], "--levels"),
                (["--levels", ""], "--levels"), (["--seed", "-1"], "--seed")],
    "sample": [(["--n", "0"], "--n"), (["--seed", "-1"], "--seed")],
    "check": [(["--n-samples", "0"], "--n-samples"), (["--levels", "2"], "--levels"), (["--seed", "-1"], "--seed")],
    "power": [(["--fdr", "2"], "fdr"), (["--lfc", "-1"], "lfc"), (["--de-fraction", "1.5"], "de_fraction"),
              (["--depth", "-1"], "depth"), (["--n-draws", "0"], "n_draws"), (["--n-rep", "0"], "n_rep"),
              (["--target", "1.5"], "target"), (["--n", "a"], "--n"), (["--n", "1"], "n_per_group"),
              (["--min-abs-lfc", "x"], "--min-abs-lfc"), (["--min-abs-lfc", "-1"], "min_abs_lfc"),
              (["--effects", "foo", "--reference-n", "3"], "effects"),
              (["--effects", "posterior", "--reference-n", "1"], "reference_n"),
              (["--effects", "posterior"], "--reference-n"), (["--contrast", "a:b"], "--contrast"),
              (["--seed", "-1"], "--seed")],
    "explain": [(["--n-draws", "0"], "n_draws"), (["--n-counts", "1"], "n_counts"), (["--level", "1.5"], "level"),
                (["--max-obs", "0"], "max_obs"), (["--seed", "-1"], "--seed")],
    "annotate": [(["--n-samples", "0"], "--n-samples"), (["--library-size", "-1"], "--library-size"),
                 (["--seed", "-1"], "--seed")],
    "coef": [(["--levels", "0"], "--levels")],
    "demo": [(["--max-epochs", "0"], "max_epochs"), (["--seed", "-1"], "--seed")],
}
CASES = [(cmd, args, word) for cmd, bad in BAD.items() for args, word in bad]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    import anndata as ad

    d = tmp_path_factory.mktemp("opts")
    a = ad.AnnData(np.ones((6, 3), np.float32), obs=pd.DataFrame({"g": list("aabbcc")}, index=[f"o{i}" for i in range(6)]))
    a.write_h5ad(d / "x.h5ad")
    a.obs.to_csv(d / "meta.csv")
    (d / "m.npz").write_bytes(b"not a model file")
    x, m, meta, o = str(d / "x.h5ad"), str(d / "m.npz"), str(d / "meta.csv"), str(d / "out")
    return {"fit": [x, "--out", o + ".npz"], "predict": [m, "--obs", meta, "--out", o + ".nc"],
            "sample": [m, "--obs", meta, "--n", "2", "--out", o + ".h5ad"], "check": [m, "--data", x, "--out", o],
            "power": [m, "--contrast", "g:a:b", "--out", o], "explain": [m, "--data", x, "--out", o],
            "annotate": [m, x, "--out", o + ".h5ad"], "coef": [m, "--out", o + ".csv"], "demo": ["--out", o]}


@pytest.mark.parametrize("cmd, args, word", CASES, ids=[f"{c}{' '.join(a)}" for c, a, _ in CASES])
def test_a_bad_option_is_a_one_line_error_with_exit_code_2(files, cmd, args, word):
    res = CliRunner().invoke(app, [cmd, *files[cmd], *args])
    lines = res.output.strip().splitlines()
    assert res.exit_code == 2, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    assert "Traceback" not in res.output and len(lines) == 1, res.output
    assert lines[0].startswith("error: ") and word in lines[0], lines[0]
    assert "model file" not in lines[0]  # refused before the model file was read
