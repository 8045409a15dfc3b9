"""``ckptlab study``: a preset over seeds (and conditions), from training to the alignment table."""

from __future__ import annotations

import warnings

import click

from ckptlab.errors import CkptlabError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _names(ctx, param, value):
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise click.BadParameter(f"expected comma-separated names, got {value!r}")
    return tuple(items)


@click.command("study", context_settings=CONTEXT)
@click.argument("preset")
@click.option("--seeds", type=int, default=3, show_default=True,
              help="Number of seeds: 0 .. N-1 (the config's seed field).")
@click.option("--out", "-o", required=True, help="Study folder (new, empty, or this same study).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config field for every seed (JSON value), e.g. --set steps=5000.")
@click.option("--vary", metavar="KEY=V1,V2",
              help="Run the same seeds under each value of one field, e.g. --vary "
                   "weight_decay=0.1,1 (the first is the reference).")
@click.option("--metrics", callback=_names, help="Analysis families, e.g. mi,lc (default all).")
@click.option("--estimators", callback=_names, help="MI estimators, e.g. binning,kde.")
@click.option("--tolerance", type=float, default=0.5, show_default=True,
              help="Decades within which two events count as aligned.")
@click.option("--n-boot", type=int, default=2000, show_default=True,
              help="Bootstrap resamples over seeds.")
@click.option("--confidence", type=float, default=0.95, show_default=True,
              help="Coverage of the bootstrap intervals.")
@click.option("--scheduler", default="threads", show_default=True,
              help="Where seeds run: threads, processes, synchronous, or a Dask scheduler "
                   "address (tcp://host:port).")
@click.option("--workers", "n_workers", type=int, help="Workers of a local scheduler.")
@click.option("--no-figure", is_flag=True, help="Do not write timeline.png.")
def study_cmd(preset, seeds, out, overrides, vary, metrics, estimators, tolerance, n_boot,
              confidence, scheduler, n_workers, no_figure):
    """Train PRESET over seeds, analyse and segment every run, and align their events.

    \b
    ckptlab study quick-grok --seeds 5 --out study/
    ckptlab study quick-grok --seeds 3 --out wd/ --vary weight_decay=0.1,1
    ckptlab study quick-ib --seeds 3 --out ib/ --metrics mi --estimators binning

    Writes into --out: seed<k>.zarr (with --vary <condition>/seed<k>.zarr), events.zarr (every
    event per seed and the alignment tables, for xarray), alignment.txt, timeline.png and
    study.json. Running it again trains only what is missing.
    """
    from trainers.study import EVENTS_FILE, FIGURE_FILE, TABLE_FILE, study

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        try:
            res = study(preset, out, seeds=seeds, overrides=overrides, vary=vary,
                        metrics=metrics, estimators=estimators, tolerance_decades=tolerance,
                        n_boot=n_boot, confidence=confidence, scheduler=scheduler,
                        n_workers=n_workers, figure=not no_figure,
                        report=lambda line: click.echo(line, err=True))
        except CkptlabError as exc:
            raise click.ClickException(str(exc)) from None
    for text in dict.fromkeys(str(w.message) for w in seen
                              if issubclass(w.category, (UserWarning, RuntimeWarning))):
        click.echo(f"Warning: {text}", err=True)
    click.echo(res.table)
    wrote = [TABLE_FILE, EVENTS_FILE] + ([] if no_figure else [FIGURE_FILE])
    click.echo(f"\n{res.path}: {res.trained} of {sum(map(len, res.actions.values()))} runs "
               f"trained now, in {res.seconds:.1f} s; wrote {', '.join(wrote)}")
