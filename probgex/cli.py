"""The `probgex` shell command: fit, predict, sample and demo over the same API as Python.

Importing this module (and `probgex --help`) loads no JAX: each command imports what it runs.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from probgex.choices import ANNOTATE_LAYERS, DISPERSIONS, LATENT_KINDS, LIKELIHOODS, MODELS, SCALES, TRAINED_MEANS
from probgex.errors import ProbgexError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Probabilistic generative models of gene-expression counts from metadata.")
console = Console(stderr=True)


Story = Enum("Story", [(m, m) for m in MODELS], type=str)  # --model
Prior = Enum("Prior", [(k, k) for k in LATENT_KINDS], type=str)  # --prior
Dispersion = Enum("Dispersion", [(k, k) for k in DISPERSIONS], type=str)  # fit --dispersion
Layer = Enum("Layer", [(k, k) for k in ANNOTATE_LAYERS], type=str)  # annotate --layer


def _read_predictions(path: Path, scale: str, key: str | None = None):
    """A stage-1 prediction table (obs x genes; index = obs names) from .csv/.tsv or .h5ad (X); with `key`
    (comma-separated obs columns) one row per combination of their values: in the table's columns of those
    names (.csv/.tsv) or in the obs of the .h5ad."""
    import numpy as np
    import pandas as pd

    from probgex.errors import DataError
    from probgex.mean import External

    keys = None if key is None else [k.strip() for k in key.split(",") if k.strip()]
    if not path.is_file():
        raise DataError(f"--mean {path}: no such file; pass {' or '.join(TRAINED_MEANS)} or a table of predictions "
                        "(.csv/.tsv/.h5ad)")
    if path.suffix == ".h5ad":
        from probgex.data import read_h5ad

        a = read_h5ad(path, "--mean")
        x = a.X.toarray() if hasattr(a.X, "toarray") else np.asarray(a.X)
        if keys:
            missing = [k for k in keys if k not in a.obs.columns]
            if missing:
                raise DataError(f"--mean-key: the obs of {path} lack {missing} (columns: {list(a.obs.columns)})")
            index = pd.MultiIndex.from_frame(a.obs[keys].astype(str))
            return External(pd.DataFrame(x, index=index, columns=pd.Index(a.var_names, dtype=str)), scale=scale,
                            key=keys)
        return External.from_array(x, a.obs_names, a.var_names, scale=scale)
    if path.suffix not in (".csv", ".tsv"):
        raise DataError(f"--mean {path}: unknown table format {path.suffix!r}; use .csv, .tsv or .h5ad")
    try:
        table = pd.read_csv(path, sep="\t" if path.suffix == ".tsv" else ",", index_col=None if keys else 0)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise DataError(f"--mean {path}: cannot read the table ({str(e).splitlines()[0]}); it needs a header "
                        "of gene names and one row per observation") from e
    if keys:
        return External(table, scale=scale, key=keys)
    table.index = table.index.astype(str)
    return External(table, scale=scale)


@contextmanager
def _shell_errors():
    """Bad input inside the block (a ProbgexError) ends the command with its one-line message and exit
    code 2, never a traceback."""
    try:
        yield
    except ProbgexError as e:
        raise _fail(e) from None


def _fail(e: Exception) -> typer.Exit:
    from rich.markup import escape

    # the message as written: no rich markup ([...] lists) or emoji codes (:a: in a contrast) taken from it
    console.print(f"[bold red]error:[/] {escape(str(e))}", soft_wrap=True, emoji=False)
    return typer.Exit(code=2)


def _levels(text: str) -> tuple[float, ...]:
    """--levels parsed and checked (SpecError), before any file is read."""
    from probgex.errors import SpecError
    from probgex._checks import check_levels

    try:
        values = tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise SpecError(f"--levels must be comma-separated numbers in (0, 1) such as 0.5,0.9, got {text!r}") from None
    try:
        return check_levels(values)
    except SpecError as e:
        raise SpecError(f"--levels: {e}") from None


def _n_samples(n: int, option: str = "--n-samples") -> int:
    from probgex.errors import SpecError

    if n < 1:
        raise SpecError(f"{option} must be a positive number of predictive draws (e.g. 200), got {n}")
    return n


def _seed(seed: int) -> int:
    """--seed checked (SpecError) before any JAX work: an int in [0, 2**31)."""
    from probgex._checks import check_seed
    from probgex.errors import SpecError

    try:
        check_seed(seed)
    except SpecError as e:
        raise SpecError(f"--{e}") from None
    return seed


# the options several commands share, declared once
OVERWRITE = typer.Option(help="replace an existing output (written beside it first, swapped in at the end)")
Overwrite = Annotated[bool, OVERWRITE]
ModelFile = Annotated[Path, typer.Argument(help="model file written by `probgex fit`")]
Seed = Annotated[int, typer.Option(help="random seed, an int in [0, 2**31): the same seed, the same result")]
Levels = Annotated[str, typer.Option(help="central interval levels, comma-separated fractions")]


def _streaming_note(data: Path, layer: str | None, memory_budget: float | None) -> int:
    """The memory budget in bytes; says when the counts of `data` will be streamed from disk."""
    from probgex.data import check_store
    from probgex.rowsource import default_memory_budget, open_anndata

    budget = default_memory_budget() if memory_budget is None else int(memory_budget * 2**30)
    _, counts = open_anndata(check_store(data), layer=layer)
    need = counts.nbytes()
    if need > budget:
        console.print(f"the counts take {need / 2**30:.2f} GiB in memory, over the budget of {budget / 2**30:.2f} GiB "
                      "(--memory-budget): streaming them from disk in row chunks")
    return budget


@app.command()
def fit(
    data: Annotated[Path, typer.Argument(help="AnnData .h5ad file or .zarr store with raw counts in X (or --layer)")],
    out: Annotated[Path, typer.Option(help="model file to write (.npz)")],
    formula: Annotated[str, typer.Option(help="design over obs, e.g. '~ cell_type + stim'")] = "~ 1",
    likelihood: Annotated[str, typer.Option(help=" | ".join(LIKELIHOODS))] = "nb",
    model: Annotated[Story, typer.Option(
        help="glm (no latent), cvae (conditional VAE) or residual (variability around a stage-1 mean)")] = Story.glm,
    mean: Annotated[str, typer.Option(
        help="residual: the stage-1 mean, glm | mlp | a table of predictions (.csv/.tsv/.h5ad, obs x genes)")] = "glm",
    mean_scale: Annotated[str, typer.Option(
        help="units of a prediction table: " + " | ".join(SCALES))] = "counts",
    mean_key: Annotated[str | None, typer.Option(
        help="obs columns (comma-separated) whose values key the rows of the --mean table, one row per "
             "combination, so the model predicts new metadata; default: rows keyed by obs name")] = None,
    latent_dim: Annotated[int, typer.Option(help="latent dimension of the cvae / residual model; 0 with "
                                            "--model residual: a GLM around stage 1 (bulk data)")] = 10,
    prior: Annotated[Prior | None, typer.Option(
        help="latent prior of the cvae: auto (the default: chosen after the VAE stage, the flow with >= 200 training "
             "cells and an active latent, else the gaussian), gaussian, or a learned diffusion / flow prior trained on "
             "the latents after the VAE")] = None,
    layer: Annotated[str | None, typer.Option(help="AnnData layer holding the raw counts")] = None,
    spec: Annotated[Path | None, typer.Option(help="model spec TOML; overrides the options above")] = None,
    holdout: Annotated[float | None, typer.Option(
        help="fraction of observations held out for early stopping (default: 0.1; none for a glm with "
             "fewer than 50 observations)")] = None,
    library: Annotated[str, typer.Option(
        help="library size: auto (size_factors for bulk-like counts, else observed) | observed (total "
             "counts) | size_factors (median of ratios) | latent (cvae)")] = "auto",
    dispersion: Annotated[Dispersion, typer.Option(
        help="gene (one NB dispersion per gene) | gene-group (one per gene and level of --dispersion-key)")
    ] = Dispersion.gene,
    dispersion_key: Annotated[str | None, typer.Option(
        help="obs column whose levels get their own dispersions (with --dispersion gene-group)")] = None,
    sample_quality: Annotated[str | None, typer.Option(
        help="a per-sample (per-cell) dispersion scale with a fitted prior, integrated over for new ones: "
             "on | off (default off)")] = None,
    coef_prior: Annotated[str | None, typer.Option(
        help="glm: the coefficients' prior sd, fixed (3 for every coefficient) | learned (one sd per formula "
             "term fitted from all genes) | learned-interactions (fitted for the interaction terms only, main "
             "effects at 3: to predict unseen combinations with an interaction formula) | "
             "learned-interactions-per-gene (as learned-interactions, with one sd per gene and interaction term "
             "under a half-Cauchy around a fitted sd per term) | learned-interactions-per-gene-level (as "
             "learned-interactions-per-gene, and a scale per level of the interaction from a half-Cauchy population: "
             "an unseen level's scale is drawn from it); default fixed")] = None,
    max_epochs: Annotated[int | None, typer.Option(help="maximum epochs (default: by story)")] = None,
    batch_size: Annotated[int, typer.Option()] = 128,
    learning_rate: Annotated[float | None, typer.Option(
        help="Adam step size (default: 0.02 for a glm, 1e-3 for the networks)")] = None,
    patience: Annotated[int | None, typer.Option(
        help="epochs without held-out improvement before early stopping (default: by story and size)")] = None,
    prior_steps: Annotated[int | None, typer.Option(
        help="optimizer steps of a learned --prior diffusion / flow (or of the flow --prior auto may choose; "
             "default 20000; held-out early stopping may end it sooner)")] = None,
    seed: Seed = 0,
    overwrite: Overwrite = False,
    resume: Annotated[bool, typer.Option(
        help="continue an interrupted fit from its checkpoint (at --out, or beside it as OUT.partial.npz); "
             "give the same data and options as the interrupted command")] = False,
    devices: Annotated[int | None, typer.Option(
        help="local devices each minibatch is split across, parameters replicated (default: all)")] = None,
    coordinator: Annotated[str | None, typer.Option(
        help="several processes (hosts): process 0's HOST:PORT; every process runs this command with the same "
             "data and options and its own --process-id; process 0 writes --out")] = None,
    num_processes: Annotated[int, typer.Option(help="with --coordinator: the number of processes")] = 1,
    process_id: Annotated[int, typer.Option(help="with --coordinator: this process's id, 0 .. num-processes - 1")] = 0,
    memory_budget: Annotated[float | None, typer.Option(
        help="GiB the counts may take in memory; larger counts are streamed from disk in row chunks "
             "(default: an eighth of the machine's memory, at most 1)")] = None,
):
    """Fit a model by SVI and write it, with checkpoints while fitting (to --out, or beside an existing
    --out with --overwrite, which the finished model then replaces). With --resume, an interrupted fit
    continues from its last checkpoint and ends as the uninterrupted fit would have."""
    from probgex._outputs import check_output
    from probgex.errors import SpecError
    from probgex._checks import check_fit_options
    from probgex.latent import LATENT_KINDS as LATENTS
    from probgex.spec import ModelSpec

    with _shell_errors():
        check_fit_options(max_epochs=max_epochs, batch_size=batch_size, holdout=holdout, patience=patience,
                          learning_rate=learning_rate, devices=devices, count_devices=coordinator is None)
        seed = _seed(seed)
        if memory_budget is not None and not 0 < memory_budget < float("inf"):
            raise SpecError(f"--memory-budget must be a positive number of GiB, got {memory_budget!r}")
        if mean_key is not None and (model is not Story.residual or mean in TRAINED_MEANS) and spec is None:
            raise SpecError("--mean-key says which obs columns key a table of predictions: it needs --model "
                            "residual --mean TABLE")
        if prior_steps is not None and prior_steps < 1:
            raise SpecError(f"--prior-steps must be a positive number of optimizer steps, got {prior_steps}")
        mean_table = Path(mean) if model is Story.residual and mean not in TRAINED_MEANS else None
        # resuming continues the checkpoint at --out (or beside it): that file is expected to exist
        check_output(out, [data, spec, mean_table], overwrite=overwrite or resume)
        if spec is not None:
            if not spec.is_file():
                raise SpecError(f"--spec {spec}: no such file; pass a model spec TOML (see ModelSpec.save)")
            model_spec = ModelSpec.load(spec)
            table = model_spec.mean == "external"  # the spec names no table: --mean (and its scale) supply it
            given = {"--formula": formula != "~ 1", "--likelihood": likelihood != "nb",
                     "--model": model is not Story.glm, "--mean": mean != "glm" and not table,
                     "--mean-scale": mean_scale != "counts" and not table,
                     "--mean-key": mean_key is not None and not table,
                     "--latent-dim": latent_dim != 10, "--prior": prior is not None,
                     "--layer": layer is not None, "--library": library != "auto",
                     "--dispersion": dispersion is not Dispersion.gene, "--dispersion-key": dispersion_key is not None,
                     "--prior-steps": prior_steps is not None,
                     "--sample-quality": sample_quality is not None, "--coef-prior": coef_prior is not None}
            clash = [k for k, v in given.items() if v]
            if clash:
                raise SpecError(f"--spec {spec} sets the model, but {', '.join(clash)} was given too; put "
                                "the setting in the spec file or drop --spec (nothing is silently overridden)")
            if table and mean in TRAINED_MEANS:
                raise SpecError(f"--spec {spec} has mean = 'external': pass its table of predictions with --mean "
                                "TABLE (.csv/.tsv/.h5ad)")
            mean_table = Path(mean) if table else None
        else:
            if prior not in (None, Prior.gaussian) and model is not Story.cvae:
                raise typer.BadParameter(f"--prior {prior.value} needs --model cvae (the GLM has no latent)")
            no_latent = model is Story.glm or (model is Story.residual and latent_dim == 0)
            # without --prior: the cVAE's auto prior (probgex.inference.auto_prior), the residual story's Gaussian
            kind = prior.value if prior is not None else "auto" if model is Story.cvae else "gaussian"
            if prior_steps is not None and kind == "gaussian":
                raise SpecError("--prior-steps sets the training of a learned prior: it needs --model cvae with "
                                "--prior diffusion, flow or auto (the default)")
            steps = {} if prior_steps is None else {"training": {"max_steps": prior_steps}}
            latent = None if no_latent else LATENTS[kind](dim=latent_dim, **steps)
            quality = {} if sample_quality is None else {"sample_quality": sample_quality}
            if coef_prior is not None:
                quality["coef_prior"] = coef_prior
            model_spec = ModelSpec.create(formula, likelihood, latent, layer=layer, library=library, **quality,
                                          dispersion=dispersion.value, dispersion_key=dispersion_key,
                                          mean=None if model is not Story.residual else
                                          mean if mean in TRAINED_MEANS else "external")
        if coordinator is not None:  # JAX's distributed runtime, before any JAX computation
            from probgex.inference.sharding import start_processes

            start_processes(coordinator, num_processes, process_id)
        elif num_processes != 1 or process_id != 0:
            raise SpecError("--num-processes / --process-id need --coordinator HOST:PORT (process 0's address)")
        from probgex.fit import Model  # the options are valid: only now the JAX side

        from probgex import _resume

        stage1 = None
        if model_spec.mean == "external":
            check_output(out, [mean_table], overwrite=overwrite or resume)
            stage1 = _read_predictions(Path(mean), mean_scale, mean_key)
        source = finished = None
        if resume:
            source = _resume.checkpoint_of(out)
            finished = _resume.done(_resume.load(source, stage1))
        budget = _streaming_note(data, model_spec.layer, memory_budget)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*nothing to resume")  # said below
            fitted = Model.from_spec(model_spec, stage1).fit(data, seed=seed, holdout=holdout, max_epochs=max_epochs,
                                                             learning_rate=learning_rate, patience=patience,
                                                             batch_size=batch_size, checkpoint_path=out, resume=source,
                                                             memory_budget=budget, devices=devices)
    if finished:
        console.print(f"{fitted!r}\n{source} holds the finished fit: nothing to resume")
    else:
        console.print(f"{fitted!r}\n" + (f"resumed from {source}, " if resume else "") + f"wrote {out}")


@app.command()
def predict(
    model: ModelFile,
    obs: Annotated[Path, typer.Option(help="metadata: .h5ad (its obs) or .csv/.tsv table")],
    out: Annotated[Path, typer.Option(help="predictions as netCDF (.nc)")],
    n_samples: Annotated[int, typer.Option()] = 200,
    levels: Levels = "0.5,0.8,0.9,0.95",
    library_size: Annotated[str | None, typer.Option(
        help="a number, or an obs column of library sizes; default: drawn from the training ones")] = None,
    seed: Seed = 0,
    overwrite: Overwrite = False,
):
    """Draw count profiles from p(x | metadata) with their mean, sd and central intervals."""
    import numpy as np
    import pandas as pd

    from probgex._outputs import atomic_file, check_output
    from probgex.data import read_obs_table
    from probgex.errors import DataError

    with _shell_errors():
        n_samples, lv, seed = _n_samples(n_samples), _levels(levels), _seed(seed)
        check_output(out, [model, obs], overwrite=overwrite)
        from probgex.fit import load  # the options are valid: only now the JAX side

        fitted = load(model)
        meta = read_obs_table(obs)
        lib = None
        if library_size is not None:
            if library_size in meta.columns:
                values = pd.to_numeric(meta[library_size], errors="coerce")
                if values.isna().any():
                    bad = meta[library_size][values.isna()]
                    raise DataError(f"--library-size column {library_size!r} must hold positive numbers; found "
                                    f"{list(bad.astype(str).unique()[:3])} (e.g. at {str(bad.index[0])!r})")
                lib = values.to_numpy(np.float64)
            else:
                try:
                    lib = float(library_size)
                except ValueError:
                    raise DataError(f"--library-size {library_size!r} is neither a number nor a column "
                                    f"of the metadata (columns: {list(meta.columns)})") from None
        from probgex.inference.predict import predict_to_file

        # block by block into the file (never draws x obs x genes in memory); non-finite output is refused
        # there, and the file then never replaces anything
        with atomic_file(out) as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # non-finite output is refused, block by block
            sizes = predict_to_file(fitted, meta, tmp, n_samples=n_samples, levels=lv, library_size=lib, seed=seed)
    console.print(f"wrote {out}: {sizes}")


@app.command()
def sample(
    model: ModelFile,
    obs: Annotated[Path, typer.Option(help="metadata: .h5ad (its obs) or .csv/.tsv table, one row per kind of profile")],
    n: Annotated[int, typer.Option(help="synthetic profiles per metadata row")],
    out: Annotated[Path, typer.Option(help="synthetic AnnData to write (.h5ad): raw counts in X, the metadata in obs")],
    library_size: Annotated[str | None, typer.Option(
        help="an obs column of library sizes, or one number; default: drawn as the model learned them")] = None,
    seed: Seed = 0,
    overwrite: Overwrite = False,
):
    """Draw N synthetic count profiles per metadata row from p(x | metadata), flagged `synthetic`, ready to
    concatenate with real data (anndata.concat)."""
    from probgex._outputs import atomic_file, check_output
    from probgex.data import read_obs_table
    from probgex.errors import DataError

    with _shell_errors():
        n, seed = _n_samples(n, "--n"), _seed(seed)
        if out.suffix != ".h5ad":
            raise DataError(f"--out {out}: the synthetic data are written as an AnnData; give a path ending in .h5ad")
        check_output(out, [model, obs], overwrite=overwrite)
        meta = read_obs_table(obs)
        lib = library_size
        if library_size is not None and library_size not in meta.columns:
            try:
                lib = float(library_size)
            except ValueError:
                raise DataError(f"--library-size {library_size!r} is neither a number nor a column "
                                f"of the metadata (columns: {list(map(str, meta.columns))})") from None
        from probgex.synthetic import library_sizes, sample as draw

        library_sizes(meta, lib)  # bad library sizes are refused before the model is loaded
        from probgex.fit import load  # the options are valid: only now the JAX side

        synth = draw(load(model), meta, n, seed=seed, library_size=lib)
    with atomic_file(out) as tmp:
        synth.write_h5ad(tmp)
    console.print(f"wrote {out}: {synth.n_obs:,} synthetic profiles x {synth.n_vars:,} genes "
                  f"({n} per metadata row, library sizes {synth.uns['probgex_sample']['library_size']})")


@app.command()
def check(
    model: ModelFile,
    data: Annotated[Path, typer.Option(help="held-out AnnData .h5ad with raw counts and metadata")],
    out: Annotated[Path, typer.Option(help="folder for report.json, report.html and the figures")],
    n_samples: Annotated[int, typer.Option(help="predictive draws")] = 200,
    levels: Levels = "0.5,0.8,0.9,0.95",
    seed: Seed = 0,
    reference: Annotated[Path | None, typer.Option(
        help="training AnnData .h5ad on which to choose the gene programs of the joint-calibration check "
             "(default: the held-out data, which biases program coverage low)")] = None,
    overwrite: Overwrite = False,
):
    """Calibration and posterior predictive checks on held-out data, predicting from metadata only."""
    from probgex._outputs import REPORT_FILES, check_output_folder
    from probgex.data import check_store

    with _shell_errors():
        n_samples, lv, seed = _n_samples(n_samples), _levels(levels), _seed(seed)
        check_output_folder(out, REPORT_FILES, [model, data, reference], overwrite=overwrite)
        from probgex.diagnostics import check as run_check  # the options are valid: only now the JAX side
        from probgex.fit import load

        fitted = load(model)
        # the paths: the counts are read in row chunks (streamed from disk when over the memory budget)
        ref = None if reference is None else check_store(reference, "--reference")
        report = run_check(fitted, check_store(data), n_samples=n_samples, levels=lv, seed=seed, reference=ref)
    report.save(out)
    _print_report(report.summary())
    console.print(f"wrote {out}/report.html, report.json and figures")


def _print_report(summary: dict) -> None:
    table = Table(title=f"held-out calibration: {summary['n_obs']} obs x {summary['n_genes']} genes")
    for col in ("nominal", "coverage", "worst decile |dev|", "genes within 3 SE"):
        table.add_column(col)
    for a, c in summary["coverage"].items():
        table.add_row(a, f"{c:.4f}", f"{summary['worst_decile_deviation'][a]:.4f}",
                      f"{summary['genes_within_3se'][a]:.4f}")
    out = Console()
    out.print(table)
    pu = summary["pit_uniformity"]
    out.print(f"PIT uniformity: pooled inside 99% band: {pu['pooled']['inside_band']}, "
              f"genes passing: {pu['fraction_genes_passing']:.3f}")
    out.print(f"mean log predictive density per observation: {summary['mean_log_predictive_density']:.2f}")
    out.print(f"verdict: {summary['verdict']['status']}. {summary['verdict']['text']}", markup=False)


def _print_power(s: dict | None, title: str = "power from a 3-vs-3 pilot (Snf2 vs WT, FDR 0.05)") -> None:
    """A power curve's summary (`power.report.write`): power with its interval and the realized FDR per
    group size (the demo's and `probgex power`'s)."""
    if not s:
        return
    table = Table(title=title)
    for col in ("n per group", "power", "interval", "realized FDR"):
        table.add_column(col)
    for r in s["per_n"]:
        table.add_row(str(r["n_per_group"]), f"{r['power']:.3f}", f"[{r['power_lower']:.3f}, {r['power_upper']:.3f}]",
                      f"{r['realized_fdr']:.3f}")
    Console().print(table)


@app.command()
def power(
    model: Annotated[Path, typer.Argument(help="NB GLM model file written by `probgex fit`")],
    contrast: Annotated[str, typer.Option(help="column:level:reference, e.g. strain:Snf2:WT")],
    out: Annotated[Path, typer.Option(help="folder for power.json, power.nc and power.png")],
    n: Annotated[str, typer.Option(help="replicates per group, comma-separated")] = "3,6,12,24",
    fdr: Annotated[float, typer.Option(help="FDR at which genes are called")] = 0.05,
    lfc: Annotated[float, typer.Option(help="|log2 fold change| of the DE genes")] = 0.585,
    de_fraction: Annotated[float, typer.Option(help="share of genes that are DE")] = 0.1,
    depth: Annotated[float | None, typer.Option(help="library size per sample (default: the fit's)")] = None,
    n_draws: Annotated[int, typer.Option(help="posterior draws (one set of experiments each)")] = 20,
    n_rep: Annotated[int, typer.Option(help="experiments per draw")] = 2,
    target: Annotated[float, typer.Option(help="power for the smallest-n answer")] = 0.8,
    pilot: Annotated[Path | None, typer.Option(
        help="the .h5ad the model was fitted on: adds the uncertainty of which replicates it drew "
             "(jackknife of its dispersion level) to the interval")] = None,
    effects: Annotated[str | None, typer.Option(
        help="'posterior' or 'shrunk': every gene changes by its own posterior log2FC draw instead of "
             "--lfc/--de-fraction (needs --reference-n)")] = None,
    reference_n: Annotated[int | None, typer.Option(
        help="with --effects: replicates per group of the simulated reference experiment that calls the DE genes")] = None,
    min_abs_lfc: Annotated[str, typer.Option(help="also report power among DE genes with |log2FC| above these, comma-separated")] = "",
    nested: Annotated[bool, typer.Option(help="experiments are subsamples of the reference experiment")] = False,
    seed: Seed = 0,
    overwrite: Overwrite = False,
):
    """Power curve of a two-group experiment simulated from the model's posterior (see pg.power.curve)."""

    from probgex._checks import check_power_options
    from probgex._outputs import POWER_FILES, check_output_folder
    from probgex.data import read_h5ad
    from probgex.errors import SpecError

    with _shell_errors():
        parts = contrast.split(":")
        if len(parts) != 3 or not all(parts):
            raise SpecError(f"--contrast must be column:level:reference (e.g. strain:Snf2:WT), got {contrast!r}")
        if parts[1] == parts[2]:
            raise SpecError(f"--contrast {contrast!r} compares level {parts[1]!r} with itself; name two different "
                            "levels (column:level:reference)")
        if effects is not None and reference_n is None:
            raise SpecError("--effects needs --reference-n: with effects from the fit every gene has some fold "
                            "change, and the reference experiment (reference_n per group) calls each draw's DE genes")
        try:
            grid = [int(t) for t in n.split(",") if t.strip()]
        except ValueError:
            raise SpecError(f"--n must be comma-separated integers, got {n!r}") from None
        try:
            thresholds = [float(t) for t in min_abs_lfc.split(",") if t.strip()]
        except ValueError:
            raise SpecError(f"--min-abs-lfc must be comma-separated numbers, got {min_abs_lfc!r}") from None
        seed = _seed(seed)
        check_power_options(n_per_group=grid, fdr=fdr, target=target, n_draws=n_draws, n_rep=n_rep, depth=depth,
                            lfc=lfc, de_fraction=de_fraction, effects=effects, reference_n=reference_n,
                            min_abs_lfc=thresholds, nested=nested)
        check_output_folder(out, POWER_FILES, [model, pilot], overwrite=overwrite)
        from probgex.fit import load  # the options are valid: only now the JAX side
        from probgex.power import curve

        fitted = load(model)
        pilot_data = None if pilot is None else read_h5ad(pilot, "--pilot")
        ds = curve(fitted, tuple(parts), grid, key=seed, fdr=fdr, lfc=lfc,
                   de_fraction=de_fraction, depth=depth, n_draws=n_draws, n_rep=n_rep, target=target,
                   effects=effects, reference_n=reference_n, min_abs_lfc=thresholds, pilot=pilot_data,
                   nested=nested)
    from probgex.power.report import write

    s = write(ds, out)
    _print_power(s, f"power at FDR {fdr}, |log2FC| = {lfc}")
    console.print(f"smallest n reaching {target:.0%} power: {s['n_at_target']}; wrote {out}/power.json, power.nc, power.png")


@app.command()
def explain(
    model: ModelFile,
    data: Annotated[Path, typer.Option(help="AnnData .h5ad: the observations whose variance is split (raw counts, metadata)")],
    out: Annotated[Path, typer.Option(help="folder for variance.csv, variance.json, violins.png, top_genes.png")],
    n_draws: Annotated[int, typer.Option(help="posterior draws (GLM) / Monte Carlo replicates (latent stories)")] = 50,
    n_counts: Annotated[int | None, typer.Option(help="Poisson count draws per Gamma rate (default: by size)")] = None,
    level: Annotated[float, typer.Option(help="central interval level")] = 0.9,
    max_obs: Annotated[int, typer.Option(help="most observations used (a random subset beyond)")] = 2000,
    seed: Seed = 0,
    overwrite: Overwrite = False,
):
    """Share of each gene's log1p CP10k variance explained by each formula term, the latent, NB overdispersion
    and count noise."""
    import numpy as np

    from probgex._checks import check_explain_options
    from probgex._outputs import EXPLAIN_FILES, check_output_folder
    from probgex.data import read_h5ad

    with _shell_errors():
        check_explain_options(n_draws=n_draws, n_counts=n_counts, level=level, max_obs=max_obs)
        seed = _seed(seed)
        check_output_folder(out, EXPLAIN_FILES, [model, data], overwrite=overwrite)
        from probgex.diagnostics.variance import explain as run_explain  # the options are valid: the JAX side
        from probgex.fit import load

        ds = run_explain(load(model), read_h5ad(data), n_draws=n_draws, n_counts=n_counts, level=level,
                         max_obs=max_obs, seed=seed, out=out)
    table = Table(title=f"variance explained, {ds.sizes['gene']:,} genes x {ds.attrs['n_obs']} observations")
    for col in ("term", "median share", "mean share"):
        table.add_column(col)
    for t in ds.term.values:
        s = ds.share.sel(term=t).values
        table.add_row(str(t), f"{np.median(s):.3f}", f"{s.mean():.3f}")
    Console().print(table)
    console.print(f"wrote {out}/{', '.join(EXPLAIN_FILES)}")


@app.command()
def annotate(
    model: ModelFile,
    data: Annotated[Path, typer.Argument(help="AnnData .h5ad with raw counts (X or the model's layer) and metadata")],
    out: Annotated[Path, typer.Option(help="annotated AnnData to write (.h5ad); never the input")],
    layer: Annotated[list[Layer] | None, typer.Option(
        help="also add layers['probgex_mean'] (predictive mean) and / or layers['probgex_normalized'] "
             "(expected frequencies x --library-size); repeat for both")] = None,
    n_samples: Annotated[int, typer.Option(help="draws per observation (time grows in proportion)")] = 30,
    library_size: Annotated[float, typer.Option(help="row total of the normalized layer")] = 1e4,
    seed: Seed = 0,
    overwrite: Overwrite = False,
):
    """The data with the model's results added, for a scanpy session: obsm['X_probgex'] (latent means of a
    cvae / residual model), obs['probgex_lpd'] and obs['probgex_outlier'], var['probgex_dispersion'], and the
    --layer's; counts and metadata are copied unchanged."""
    from probgex._outputs import atomic_file, check_output
    from probgex.data import read_h5ad
    from probgex.errors import DataError

    layers = tuple(v.value for v in layer or ())
    with _shell_errors():
        n_samples, seed = _n_samples(n_samples), _seed(seed)
        if not library_size > 0 or library_size == float("inf"):
            raise DataError(f"--library-size must be a positive number (e.g. 10000), got {library_size}")
        check_output(out, [model, data], overwrite=overwrite)
        if out.suffix != ".h5ad":
            raise DataError(f"--out {out}: write the annotated AnnData to an .h5ad file "
                            f"(e.g. {out.with_suffix('.h5ad')})")
        adata = read_h5ad(data)
        from probgex.annotate import annotate as run_annotate
        from probgex.fit import load

        fitted = load(model)
        run_annotate(fitted, adata, layers=layers, n_samples=n_samples, library_size=library_size, seed=seed)
    with atomic_file(out) as tmp:
        adata.write_h5ad(tmp)
    added = ["obsm['X_probgex']"] if "X_probgex" in adata.obsm else []
    added += ["obs['probgex_lpd']", "obs['probgex_outlier']"]
    added += [f"var[{c!r}]" for c in adata.var.columns if c.startswith("probgex_")]
    added += [f"layers['probgex_{v}']" for v in layers]
    console.print(f"wrote {out}: {adata.n_obs} obs x {adata.n_vars} genes with {', '.join(added)}")


@app.command()
def coef(
    model: Annotated[Path, typer.Argument(help="GLM model file written by `probgex fit` (--model glm, or residual "
                                            "with --latent-dim 0)")],
    out: Annotated[Path, typer.Option(help="coefficient table (.csv or .tsv)")],
    levels: Levels = "0.9",
    overwrite: Overwrite = False,
):
    """The GLM's coefficients (natural-log scale, per gene and design term): posterior mean, sd and central
    intervals, one row per gene and term."""
    from probgex._outputs import atomic_file, check_output
    from probgex.errors import DataError, SpecError

    with _shell_errors():
        lv = _levels(levels)
        check_output(out, [model], overwrite=overwrite)
        if out.suffix not in (".csv", ".tsv"):
            raise DataError(f"--out {out}: write the table as .csv or .tsv")
        from probgex.fit import load

        fitted = load(model)
        if fitted.spec.latent is not None:
            raise SpecError(f"{model} is a {fitted.spec.story} model with a latent: its effects live in networks, "
                            "not coefficients; `probgex coef` needs a glm (--model glm, or residual with "
                            "--latent-dim 0). Use `probgex predict` to compare conditions")
        table = coefficient_table(fitted.coefficients(lv))
    with atomic_file(out) as tmp:
        table.to_csv(tmp, sep="\t" if out.suffix == ".tsv" else ",", index=False)
    console.print(f"wrote {out}: {len(table)} rows ({table['gene'].nunique()} genes x {table['term'].nunique()} terms)")


def coefficient_table(ds):
    """`Fit.coefficients` as a long table: gene, term, mean, sd, then lower_<level>, upper_<level>."""
    import pandas as pd

    genes, terms = [str(g) for g in ds["gene"].values], [str(t) for t in ds["coef"].values]
    cols = {"gene": [g for g in genes for _ in terms], "term": terms * len(genes),
            "mean": ds["mean"].values.T.ravel(), "sd": ds["sd"].values.T.ravel()}
    for i, a in enumerate(ds["level"].values):
        cols[f"lower_{a:g}"] = ds["lower"].values[i].T.ravel()
        cols[f"upper_{a:g}"] = ds["upper"].values[i].T.ravel()
    return pd.DataFrame(cols)


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="folder for the results")] = Path("probgex-demo"),
    max_epochs: Annotated[int | None, typer.Option(help="cap the fit (for a quick look)")] = None,
    seed: Seed = 0,
    overwrite: Overwrite = False,
):
    """The main job on the embedded yeast dataset: fit an NB GLM `~ strain` on the clean replicates,
    predict held-out replicates from their metadata, and end with the calibration report."""
    from probgex._checks import check_fit_options
    from probgex._outputs import DEMO_FILES, check_output_folder

    with _shell_errors():
        check_fit_options(max_epochs=max_epochs)
        seed = _seed(seed)
        check_output_folder(out, DEMO_FILES, overwrite=overwrite)
    from probgex.demo import run_demo  # the options are valid: only now the JAX side

    summary = run_demo(out, max_epochs=max_epochs, seed=seed)
    _print_report(summary)
    _print_power(summary.get("power"))
    if summary.get("power"):
        Console().print(f"smallest n reaching the target power: {summary['power']['n_at_target']}")
    Console().print(f"results in {out}/: " + ", ".join(sorted(p.name for p in out.iterdir())))


def main():  # pragma: no cover
    warnings.filterwarnings("default")
    app()


@app.command()
def info(model: Annotated[Path, typer.Argument(help="model file (.npz)")]):
    """Print a model file's header as JSON: the spec, the design encoding, sizes, the training history's
    summary and how it was fitted (data source, streaming, devices, processes, loop options)."""
    import json

    from probgex.errors import ModelFileError

    with _shell_errors():
        if not model.is_file():
            raise ModelFileError(f"model file {str(model)!r} not found")
        from probgex.inference.modelfile import header

        h = header(model)
    hist = h.get("history", {})
    out = {k: v for k, v in h.items() if k not in ("history", "sha256", "arrays")}
    out["history"] = {"epochs": len(hist.get("train", [])), "best_epoch": hist.get("best_epoch"),
                      "final_train_loss": (hist.get("train") or [None])[-1],
                      "best_heldout_loss": min(hist["heldout"]) if hist.get("heldout") else None}
    typer.echo(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":  # pragma: no cover
    main()
