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
@click.option("--out", "-o", required=True, help="Archive to write (directory or fsspec URL).")
@click.option(
    "--set", "overrides", multiple=True, metavar="KEY=VALUE",
    help="Override a config field (JSON value), e.g. --set steps=5000 --set model_args.widths=[64].",
)
@click.option("--data-dir", type=click.Path(file_okay=False), help="Folder with MNIST IDX files.")
@click.option("--resume", is_flag=True, help="Continue the interrupted run at --out.")
@click.option("--overwrite", is_flag=True, help="Replace an existing archive at --out.")
@click.option("--show-config", is_flag=True, help="Print the final config as JSON and exit.")
def train(preset, out, overrides, data_dir, resume, overwrite, show_config):
    """Train PRESET (see `ckptlab presets`) and checkpoint it densely to --out."""
    from trainers import apply_overrides, get_preset, train as run_training

    if resume:
        if preset or overrides or data_dir:
            raise click.UsageError("--resume takes its config from the archive: drop PRESET/--set")
        result = run_training(None, out, resume=True)
    else:
        if not preset:
            raise click.UsageError("PRESET is required (see `ckptlab presets`)")
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
