"""The ``ckptlab`` command line: thin commands over the library.

Every library error (a :class:`ckptlab.CkptlabError`) becomes a one-line ``Error: ...`` and a
non-zero exit code, never a traceback.
"""

from __future__ import annotations

import json

import click

import ckptlab
from ckptlab.errors import CkptlabError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class _Group(click.Group):
    """Turns library errors into click's one-line ``Error: ...`` (exit code 1)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except CkptlabError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=_Group, context_settings=CONTEXT)
@click.version_option(ckptlab.__version__, "--version", prog_name="ckptlab")
def cli():
    """ckptlab: study how neural networks learn, from every checkpoint of their training runs.

    \b
    ckptlab train quick-grok --out run.zarr     train a preset, checkpointing densely
    ckptlab analyze run.zarr                    progress measures over every checkpoint
    ckptlab phases run.zarr                     transitions located, alignment measured
    ckptlab plot run.zarr -o figure.png         the overview figure
    """


def _human_bytes(n: int | None) -> str:
    if n is None:
        return "n/a (remote)"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@cli.command(context_settings=CONTEXT)
@click.argument("path")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def info(path, as_json):
    """Summarise the run archive at PATH (a directory or an fsspec URL)."""
    from ckptlab.store import run_info

    d = run_info(path)
    if as_json:
        click.echo(json.dumps(d, indent=2))
        return
    model = d["model"] or {}
    task = d["task"] or {}
    rows = [
        ("archive", f"{d['path']} (format {d['format_version']})"),
        ("model", f"{model.get('name', '?')} {json.dumps(model.get('kwargs', {}))}"),
        ("parameters", f"{d['n_parameters']:,}"),
        ("task", f"{task.get('name', '?')} {json.dumps(task.get('params', {}))}" if task else "-"),
        ("seed", str(d["seed"])),
        ("checkpoints", str(d["checkpoints"])),
        ("steps", f"{d['first_step']} .. {d['last_step']}" if d["checkpoints"] else "-"),
        ("size on disk", _human_bytes(d["bytes_on_disk"])),
        ("metrics", ", ".join(d["metrics"]) or "-"),
        ("analyses", ", ".join(d["analyses"]) or "-"),
        ("resumable", "yes" if d["resumable"] else "no"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        click.echo(f"{k:<{width}}  {v}")


# ---------------------------------------------------------------------------------- training
@cli.command(context_settings=CONTEXT)
def presets():
    """List the training presets, one line each."""
    from trainers.presets import PRESETS

    width = max(map(len, PRESETS))
    for name, (desc, _) in PRESETS.items():
        click.echo(f"{name:<{width}}  {desc}")


@cli.command(context_settings=CONTEXT)
@click.argument("preset", required=False)
@click.option("--out", "-o", help="Archive to write (directory or fsspec URL).")
@click.option(
    "--set", "overrides", multiple=True, metavar="KEY=VALUE",
    help="Override a config field (JSON value), e.g. --set steps=5000 --set model_args.widths=[64].",
)
@click.option("--data-dir", type=click.Path(file_okay=False), help="Folder with MNIST IDX files.")
@click.option("--resume", "resume_path", metavar="PATH",
              help="Continue the interrupted run at PATH (its config comes from the archive).")
@click.option("--overwrite", is_flag=True, help="Replace an existing archive at --out.")
@click.option("--show-config", is_flag=True, help="Print the final config as JSON and exit.")
def train(preset, out, overrides, data_dir, resume_path, overwrite, show_config):
    """Train PRESET (see `ckptlab presets`) and checkpoint it densely to --out.

    \b
    ckptlab train quick-grok --out run.zarr
    ckptlab train --resume run.zarr
    """
    from trainers import apply_overrides, get_preset, train as run_training

    if resume_path:
        if preset or overrides or data_dir or out or overwrite:
            raise click.UsageError(
                "--resume PATH takes everything from the archive: drop PRESET, --out, --set, "
                "--data-dir and --overwrite")
        result = run_training(None, resume_path, resume=True)
    else:
        if not preset:
            raise click.UsageError("PRESET is required (see `ckptlab presets`)")
        if not out and not show_config:
            raise click.UsageError("--out is required")
        cfg = get_preset(preset)
        if data_dir:
            overrides = (*overrides, f"task_args.data_dir={json.dumps(str(data_dir))}")
        elif preset == "omnigrok-mnist":
            raise click.UsageError("preset 'omnigrok-mnist' needs --data-dir with the MNIST IDX files")
        cfg = apply_overrides(cfg, overrides)
        if show_config:
            click.echo(json.dumps(cfg.to_dict(), indent=2))
            return
        result = run_training(cfg, out, overwrite=overwrite)
    f = result.final
    click.echo(
        f"{result.path}: {result.checkpoints} checkpoints over {result.steps} steps in "
        f"{result.seconds:.1f} s; final train acc {f.get('train_acc', float('nan')):.3f}, "
        f"test acc {f.get('test_acc', float('nan')):.3f}"
    )


# ---------------------------------------------------------------------------------- analysis
def _csv(kind):
    def convert(ctx, param, value):
        if value is None:
            return None
        items = [v.strip() for v in value.split(",") if v.strip()]
        if kind is float:
            try:
                return tuple(float(v) for v in items)
            except ValueError:
                raise click.BadParameter(f"expected comma-separated numbers, got {value!r}")
        return tuple(items)

    return convert


@cli.command(context_settings=CONTEXT)
@click.argument("path")
@click.option("--metrics", callback=_csv(str), help="Comma-separated: mi,lc,lmn,weights,rank (default all).")
@click.option("--estimators", callback=_csv(str), help="MI estimators: binning,adaptive,kde,renyi (default all).")
@click.option("--n-bins", type=int, default=30, show_default=True, help="Bins per unit (binning).")
@click.option("--sigma2", type=float, default=0.1, show_default=True, help="KDE noise variance.")
@click.option("--radii", callback=_csv(float), help="Local-complexity radii (default 0.005,0.05,0.5).")
@click.option("--probe-size", type=int, help="Probe examples for MI (default all, at most 4096).")
@click.option("--lmn-samples", type=int, help="Training examples for the LMN (default up to 100).")
@click.option("--block-size", type=int, default=16, show_default=True, help="Checkpoints per Dask task.")
@click.option("--scheduler", default="threads", show_default=True,
              help="threads, processes, synchronous, or a Dask scheduler address.")
@click.option("--workers", "n_workers", type=int, help="Workers of a local scheduler.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of every fixed random choice.")
@click.option("--no-store", is_flag=True, help="Do not keep results in the archive.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: on a terminal).")
def analyze(path, metrics, estimators, n_bins, sigma2, radii, probe_size, lmn_samples, block_size,
            scheduler, n_workers, device, seed, no_store, progress):
    """Compute progress measures on every checkpoint of the run at PATH.

    Results are kept in the archive; running it again computes only what is missing.
    """
    import time

    from ckptlab.analysis import analyze as run_analysis

    kw = {}
    if metrics is not None:
        kw["metrics"] = metrics
    if estimators is not None:
        kw["estimators"] = estimators
    if radii is not None:
        kw["radii"] = radii
    t0 = time.perf_counter()
    ds = run_analysis(
        path, n_bins=n_bins, sigma2=sigma2, probe_size=probe_size, lmn_samples=lmn_samples,
        block_size=block_size, scheduler=scheduler, n_workers=n_workers, device=device,
        seed=seed, store=not no_store, progress=progress, **kw,
    )
    click.echo(f"{path}: {ds.sizes['step']} checkpoints analysed in {time.perf_counter() - t0:.1f} s")
    for name, var in ds.data_vars.items():
        dims = ", ".join(d for d in var.dims if d != "step")
        click.echo(f"  {name:<20} {var.attrs.get('long_name', '')} [{var.attrs.get('units', '')}]"
                   + (f" per {dims}" if dims else ""))


@cli.command(context_settings=CONTEXT)
@click.argument("paths", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print the segmentation as JSON.")
@click.option("--tolerance", type=float, default=0.5, show_default=True,
              help="Decades within which events count as aligned.")
@click.option("--fit-threshold", type=float, default=0.99, show_default=True,
              help="Train accuracy that counts as fitted.")
def phases(paths, as_json, tolerance, fit_threshold):
    """Locate the transitions of one run (or align several seeds) from PATHS.

    Uses the curves and whatever `ckptlab analyze` stored in each archive.
    """
    from ckptlab.analysis import load_analysis
    from ckptlab.phases import align_runs, format_phase_table, seg_to_json, segment

    segs = [segment(load_analysis(p), tolerance_decades=tolerance, fit_threshold=fit_threshold)
            for p in paths]
    if as_json:
        out = {p: seg_to_json(s) for p, s in zip(paths, segs)}
        if len(segs) > 1:
            al = align_runs(segs)
            out["__runs__"] = {
                str(e): {"log10_step_mean": _num(m), "log10_step_std": _num(s), "n": int(k)}
                for e, m, s, k in zip(al["event"].values, al["log10_step_mean"].values,
                                      al["log10_step_std"].values, al["n"].values)
            }
        click.echo(json.dumps(out, indent=2))
        return
    for p, s in zip(paths, segs):
        if len(paths) > 1:
            click.echo(f"== {p}")
        click.echo(format_phase_table(s))
    if len(segs) > 1:
        click.echo("== across runs")
        click.echo(_format_runs(align_runs(segs)))


def _num(v):
    v = float(v)
    return None if v != v else v


def _format_runs(al) -> str:
    lines = [f"{'event':<34} {'n':>3} {'mean log10 step':>16} {'std':>7}"]
    mean = al["log10_step_mean"].values
    std = al["log10_step_std"].values
    n = al["n"].values
    for e, m, s, k in zip(al["event"].values, mean, std, n):
        lines.append(f"{str(e):<34} {int(k):>3} {m:>16.3f} {s:>7.3f}")
    frac = float(al["aligned_fraction"].values)
    lines.append(f"aligned in {frac:.0%} of the runs with a determined alignment")
    return "\n".join(lines)


@cli.command(context_settings=CONTEXT)
@click.argument("path")
@click.option("-o", "--out", "out", required=True, help="Figure file (png, pdf, svg).")
@click.option("--plane", "plane_out", help="Also write the information plane to this file.")
@click.option("--estimator", default=None, help="MI estimator to show (default: the first stored).")
@click.option("--dpi", type=int, default=130, show_default=True)
def plot(path, out, plane_out, estimator, dpi):
    """Write the overview figure of the run at PATH (phases shaded, events marked)."""
    from ckptlab.analysis import load_analysis
    from ckptlab.phases import segment
    from ckptlab.plot import plot_information_plane, plot_overview

    ds = load_analysis(path)
    seg = segment(ds)
    fig = plot_overview(ds, seg, estimator=estimator)
    fig.savefig(out, dpi=dpi, bbox_inches="tight")
    click.echo(f"wrote {out}")
    if plane_out:
        if "mi_xt" not in ds:
            raise click.ClickException("no mutual information stored: run `ckptlab analyze` first")
        ax = plot_information_plane(ds, estimator=estimator or str(ds["estimator"].values[0]))
        ax.figure.savefig(plane_out, dpi=dpi, bbox_inches="tight")
        click.echo(f"wrote {plane_out}")
