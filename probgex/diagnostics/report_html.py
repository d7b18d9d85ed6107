"""The self-contained HTML page of the calibration report: a verdict first, then one section per
question, each with a sentence on what good looks like, its table and its figures (embedded PNGs with
captions)."""

from __future__ import annotations

import html

STATUS_COLOUR = {"calibrated": "#d8f0d8", "partly calibrated": "#fbeccd", "miscalibrated": "#f8d4d4"}

CAPTIONS = {
    "pit_ecdf": "PIT ECDF minus the uniform CDF, pooled over all held-out counts, with its 99% simultaneous "
                "band (shaded). Inside the band everywhere: calibrated.",
    "coverage": "Share of held-out counts inside their central predictive intervals, against the nominal level; "
                "the grey diagonal is perfect coverage.",
    "coverage_by_decile": "Coverage minus nominal for genes grouped by decile of predicted mean expression "
                          "(1 = lowest). Discreteness makes intervals of low counts behave differently.",
    "rootograms_worst_genes": "Hanging rootograms of the worst-calibrated genes: the orange curve is the number of "
                              "observations the model expects in each count bin (square-root scale); the blue bars "
                              "are the observed numbers hanging from it. A bar ending below zero: more observed "
                              "than expected; above zero: fewer. Counts above the 99.5% quantile are not shown.",
    "summary_statistics": "Observed (blue line) and replicated (orange) distributions of per-gene and "
                          "per-observation statistics, and the gene-gene correlation of the most variable genes "
                          "in the observed and the replicated data (colour bar: correlation).",
    "mean_variance": "Per-gene variance against mean (log10), observed and one replicated dataset: the clouds "
                     "should overlap.",
    "mean_zero_fraction": "Per-gene share of zeros against mean (log10 mean), observed and one replicated dataset: "
                          "the clouds should overlap.",
}


def _fig(images: dict[str, str], name: str, wide: bool = False) -> str:
    if name not in images:
        return ""
    cls = " class='wide'" if wide else ""
    return (f"<figure{cls}><img src='data:image/png;base64,{images[name]}' alt='{html.escape(CAPTIONS[name])}'>"
            f"<figcaption>{html.escape(CAPTIONS[name])}</figcaption></figure>")


def _good(text: str) -> str:
    return f"<p class='good'><b>What good looks like:</b> {html.escape(text)}</p>"


def page(summary: dict, images: dict[str, str]) -> str:
    """The report as one HTML string."""
    e = html.escape
    levels = list(summary["coverage"])
    rows = "".join(f"<tr><td>{float(a):.0%}</td><td>{c:.3f}</td><td>{summary['worst_decile_deviation'][a]:.3f}</td>"
                   f"<td>{summary['genes_within_3se'][a]:.1%}</td></tr>" for a, c in summary["coverage"].items())
    worst = "".join(f"<tr><td>{e(w['gene'])}</td><td>{w['decile']}</td><td>{w['max_z']:.1f}</td>"
                    + "".join(f"<td>{v:.3f}</td>" for v in w["coverage"].values()) + "</tr>"
                    for w in summary["worst_genes"])
    stats = "".join(f"<tr><td>{e(k.replace('_', ' '))}</td><td>{v.get('ks', float('nan')):.3f}</td>"
                    f"<td>{v.get('wasserstein', float('nan')):.4g}</td></tr>"
                    for k, v in summary["summary_statistics"].items())
    progs = "".join(f"<tr><td>{e(k)}</td>" + "".join(f"<td>{c:.3f}</td>" for c in v["coverage"].values())
                    + f"<td>{'yes' if v['uniformity']['inside_band'] else '<b>no</b>'}</td></tr>"
                    for k, v in summary["gene_programs"].items())
    obs = "".join(f"<tr><td>{e(w['obs'])}</td><td>{w['coverage_0.9']:.3f}</td><td>{w['log_predictive_density']:.1f}</td></tr>"
                  for w in summary["worst_observations"])
    pu, v = summary["pit_uniformity"], summary["verdict"]
    lv_head = "".join(f"<th>{float(a):.0%}</th>" for a in levels)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>probgex calibration report</title>
<style>body{{font-family:sans-serif;font-size:16px;line-height:1.4;max-width:1200px;margin:auto;padding:0 12px}}
table{{border-collapse:collapse;margin:6px 0}}td,th{{border:1px solid #ccc;padding:3px 10px;text-align:right}}
td:first-child{{text-align:left}}figure{{display:inline-block;vertical-align:top;margin:6px;max-width:560px}}
figure.wide{{display:block;max-width:100%}}img{{max-width:100%}}figcaption{{font-size:14px;color:#333}}
.verdict{{padding:10px 14px;border-radius:6px;font-size:18px;background:{STATUS_COLOUR[v['status']]}}}
.good{{color:#1d4e2c}}</style>
</head><body><h1>probgex calibration report</h1>
<p>{e(summary['model'])}: {summary['n_obs']} held-out observations x {summary['n_genes']} genes, predicted from
their metadata (and library sizes) only, {summary['n_samples']} predictive draws each.</p>
<div class="verdict"><b>Verdict: {e(v['status'])}.</b> {e(v['text'])}</div>

<h2>1. Is the predictive distribution calibrated? (randomized PIT)</h2>
<p>The PIT of a held-out count is where it falls in its own predictive distribution; for a calibrated model the
PIT values are uniform.</p>
{_good("the blue curve stays inside the shaded band everywhere. Above zero on the left and below on the right "
       "(too many counts in both tails): predictions too narrow; the mirror image: too wide; above zero "
       "throughout: the model over-predicts.")}
<table><tr><th>PIT test (99% simultaneous band)</th><th>result</th></tr>
<tr><td>all held-out counts pooled: inside the band</td><td>{'yes' if pu['pooled']['inside_band'] else '<b>no</b>'}</td></tr>
<tr><td>largest excursion, in band half-widths (at most 1 inside)</td><td>{pu['pooled']['max_excursion']:.2f}</td></tr>
<tr><td>genes inside their own band</td><td>{pu['fraction_genes_passing']:.1%}</td></tr></table>
{_fig(images, "pit_ecdf")}

<h2>2. Do the predictive intervals hold what they promise? (coverage)</h2>
{_good("pooled coverage within a point or two of the nominal level, every expression decile within a few points "
       "of it, and about 99% of genes within 3 binomial standard errors. Coverage checks only these intervals: "
       "the PIT band above is the stricter test.")}
<table><tr><th>nominal</th><th>held-out coverage</th><th>worst decile |coverage - nominal|</th>
<th>genes within 3 SE</th></tr>{rows}</table>
{_fig(images, "coverage")}{_fig(images, "coverage_by_decile")}

<h2>3. Which genes are fitted worst?</h2>
{_good("max z (distance of a gene's coverage from nominal, in binomial standard errors) below about 4: with many "
       "genes a few values near 3 happen by chance. In the rootograms the bars end on the zero line.")}
<table><tr><th>gene</th><th>expression decile</th><th>max z</th>{lv_head}</tr>{worst}</table>
{_fig(images, "rootograms_worst_genes", wide=True)}

<h2>4. Which observations are covered least? (at 90%)</h2>
{_good("every observation near 0.90. One far below the others is a candidate outlier sample: check its metadata, "
       "library and quality.")}
<table><tr><th>observation</th><th>coverage</th><th>log p(x | c)</th></tr>{obs}</table>

<h2>5. Do replicated data look like the observed data?</h2>
{_good("KS distances below about 0.1; observed and replicated histograms overlap; the two correlation maps look "
       "alike; the mean-variance and mean-zero-fraction clouds overlap.")}
<table><tr><th>statistic</th><th>KS distance</th><th>Wasserstein distance</th></tr>{stats}</table>
{_fig(images, "summary_statistics", wide=True)}{_fig(images, "mean_variance")}{_fig(images, "mean_zero_fraction")}

<h2>6. Are sums over gene programs calibrated? (joint calibration)</h2>
{_good("coverage near nominal and 'inside band' yes for every program. If only the correlated program fails, "
       "the model misses correlation between genes (a latent factor or a missing covariate).")}
<table><tr><th>program</th>{lv_head}<th>inside band</th></tr>{progs}</table>
</body></html>"""
