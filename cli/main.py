"""The ``ckptlab`` command line: thin commands over the library.

Every library error (a :class:`ckptlab.CkptlabError`) becomes a one-line ``Error: ...`` and a
non-zero exit code, never a traceback.
"""

from __future__ import annotations

import json
import sys

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
        except OSError as exc:  # an unreadable input, an unwritable output
            where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
            raise click.ClickException(f"{where}{exc.strerror or exc}") from None


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
    if model:
        model_row = f"{model.get('name', '?')} {json.dumps(model.get('kwargs', {}))}"
    elif d.get("model_info", {}).get("class"):
        model_row = (f"{d['model_info']['class']} (recorded for information; analyse with "
                     "--model MODULE:FACTORY)")
    else:
        model_row = "none recorded (analyse with --model MODULE:FACTORY)"
    rows = [
        ("archive", f"{d['path']} (format {d['format_version']})"),
        ("model", model_row),
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


class _warnings_as_lines:
    """Library warnings (a family skipped, NaN checkpoints) as one ``Warning: ...`` line each."""

    def __enter__(self):
        import warnings

        self._cm = warnings.catch_warnings(record=True)
        self._seen = self._cm.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc):
        seen = list(self._seen)
        self._cm.__exit__(*exc)
        shown = set()
        for w in seen:
            text = str(w.message)
            if issubclass(w.category, (RuntimeWarning, UserWarning)) and text not in shown:
                shown.add(text)
                click.echo(f"Warning: {text}", err=True)
        return False


def _model_factory(ctx, param, value):
    """``--model MODULE:ATTR``: the user's own factory (or class, or module instance).

    The import path is typed by the user on the command line; nothing named inside an archive
    is ever imported. The current directory is importable, as with ``python -m``.
    """
    if value is None:
        return None
    import importlib
    import os

    mod_name, sep, attr = value.partition(":")
    if not sep or not mod_name or not attr:
        raise click.ClickException(
            f"--model must look like MODULE:FACTORY (e.g. mypkg.models:make_net), got {value!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj = importlib.import_module(mod_name)
    except Exception as exc:
        raise click.ClickException(
            f"--model: cannot import module {mod_name!r}: {type(exc).__name__}: {exc}")
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise click.ClickException(f"--model: module {mod_name!r} has no attribute {attr!r}")
    return obj


@cli.command(context_settings=CONTEXT)
@click.argument("path")
@click.option("--model", "model", callback=_model_factory, metavar="MODULE:FACTORY",
              help="Your model: a zero-argument factory (or class) returning the nn.Module the "
                   "checkpoints belong to, e.g. mypkg.models:make_net.")
@click.option("--layers", callback=_csv(str), help="Modules whose outputs are the hidden layers "
              "(default: the activation modules), e.g. fc1,fc2.")
@click.option("--embedding", help="Module whose output is the first continuous representation.")
@click.option("--lmn-from", help="Module output where the linear mapping number cuts the model.")
@click.option("--preacts", callback=_csv(str), help="Modules whose inputs local complexity counts.")
@click.option("--position", type=int, help="Sequence models: read this position (e.g. -1) only.")
@click.option("--lc-activations", type=click.Choice(["piecewise_linear", "any"]),
              default="piecewise_linear", show_default=True,
              help="Which activations local complexity counts.")
@click.option("--metrics", callback=_csv(str), help="Comma-separated: mi,lc,lmn,weights,rank (default all that apply).")
@click.option("--estimators", callback=_csv(str),
              help="MI estimators: binning, adaptive, kde, renyi, kde_rel, renyi_norm, "
                   "pca_binning, pca_knn (default binning,kde,kde_rel,renyi_norm,pca_binning).")
@click.option("--resolutions", callback=_csv(float),
              help="Relative resolutions of kde_rel and pca_knn (default 0.1,0.3,1,3).")
@click.option("--n-bins", type=int, default=30, show_default=True, help="Bins per unit (binning).")
@click.option("--sigma2", type=float, default=0.1, show_default=True, help="KDE noise variance.")
@click.option("--radii", callback=_csv(float), help="Local-complexity radii (default 0.005,0.05,0.5).")
@click.option("--probe-size", type=int, help="Probe examples for MI (default all, at most 4096).")
@click.option("--lmn-samples", type=int, help="Training examples for the LMN (default up to 100).")
@click.option("--block-size", type=int, default=None,
              help="Checkpoints per Dask task (default: from the model's size and the memory).")
@click.option("--scheduler", default="threads", show_default=True,
              help="threads, processes, synchronous, or a Dask scheduler address.")
@click.option("--workers", "n_workers", type=int, help="Workers of a local scheduler.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="Where the model runs (cuda: the same batched path on a GPU; MI on the CPU).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of every fixed random choice.")
@click.option("--no-store", is_flag=True, help="Do not keep results in the archive.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: on a terminal).")
def analyze(path, model, layers, embedding, lmn_from, preacts, position, lc_activations, metrics,
            estimators, resolutions, n_bins, sigma2, radii, probe_size, lmn_samples, block_size, scheduler,
            n_workers, device, seed, no_store, progress):
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
    if resolutions is not None:
        kw["resolutions"] = resolutions
    t0 = time.perf_counter()
    with _warnings_as_lines():
        ds = run_analysis(
            path, model=model, layers=layers, embedding=embedding, lmn_from=lmn_from,
            preacts=preacts, position=position, lc_activations=lc_activations, n_bins=n_bins,
            sigma2=sigma2, probe_size=probe_size, lmn_samples=lmn_samples,
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
@click.option("--mi", "mi_table", is_flag=True,
              help="Also print every I(X;T) curve: range, saturation, peak vs end of fitting.")
def phases(paths, as_json, tolerance, fit_threshold, mi_table):
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
        if mi_table:
            from ckptlab.phases import format_mi_summary, mi_summary

            click.echo("")
            click.echo(format_mi_summary(mi_summary(load_analysis(p), s)))
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
@click.option("--resolution-curve", "res_out",
              help="Also write the resolution curve (I(X;T) against resolution) to this file.")
@click.option("--estimator", default=None,
              help="MI estimator to show (default: the one whose unsaturated curves move most).")
@click.option("--resolution", type=float, default=None,
              help="Resolution of a relative-resolution estimator (kde_rel_upper, pca_knn).")
@click.option("--dpi", type=int, default=130, show_default=True)
def plot(path, out, plane_out, res_out, estimator, resolution, dpi):
    """Write the overview figure of the run at PATH (phases shaded, events marked)."""
    from ckptlab.analysis import load_analysis
    from ckptlab.phases import segment
    from ckptlab.plot import plot_information_plane, plot_overview, plot_resolution_curve

    ds = load_analysis(path)
    seg = segment(ds)
    fig = plot_overview(ds, seg, estimator=estimator, resolution=resolution)
    fig.savefig(out, dpi=dpi, bbox_inches="tight")
    click.echo(f"wrote {out}")
    if plane_out:
        if "mi_xt" not in ds and "mi_xt_rel" not in ds:
            raise click.ClickException("no mutual information stored: run `ckptlab analyze` first")
        ax = plot_information_plane(ds, estimator=estimator, resolution=resolution)
        ax.figure.savefig(plane_out, dpi=dpi, bbox_inches="tight")
        click.echo(f"wrote {plane_out}")
    if res_out:
        rel = estimator if estimator in ds.get("rel_estimator", []) else None
        plot_resolution_curve(ds, seg, estimator=rel).savefig(res_out, dpi=dpi,
                                                              bbox_inches="tight")
        click.echo(f"wrote {res_out}")


from cli.importing import import_cmd  # noqa: E402
from cli.verify import verify_cmd  # noqa: E402

cli.add_command(import_cmd, "import")
cli.add_command(verify_cmd, "verify")
from cli.study import study_cmd  # noqa: E402
cli.add_command(study_cmd, "study")
