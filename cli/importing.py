"""``ckptlab import SRC DEST``: checkpoints already on disk -> a run archive."""

from __future__ import annotations

import click

# as in cli.main (not imported from there: cli.main imports this module at its end)
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.command("import", context_settings=CONTEXT)
@click.argument("src")
@click.argument("dest")
@click.option("--step-pattern", metavar="REGEX",
              help="Regex whose first group (or group 'step') is the step in each file or folder "
                   "name (default: the number after 'step', else the last number).")
@click.option("--data", metavar="NPZ",
              help=".npz file with x_train, y_train, x_test, y_test, stored for analysis.")
@click.option("--metrics", metavar="FILE",
              help="CSV or JSON-lines file with a 'step' column; numeric columns become metrics.")
@click.option("--overwrite", is_flag=True, help="Replace an existing archive at DEST.")
@click.option("--progress/--no-progress", default=None,
              help="Progress bar (default: on a terminal).")
def import_cmd(src, dest, step_pattern, data, metrics, overwrite, progress):
    """Import the checkpoints in SRC (a folder or one file) into the archive DEST.

    SRC holds torch.save files (*.pt, *.pth, *.bin, *.ckpt; read with weights_only=True, so a
    file holding pickled Python objects is refused), *.safetensors files, or Hugging Face
    checkpoint-N/ folders (also sharded). Run it again on a folder that gained checkpoints to
    append the new ones.

    \b
    ckptlab import lightning_logs/version_0/checkpoints run.zarr --metrics metrics.csv
    ckptlab import hf_output/ run.zarr --data probe.npz
    """
    from ckptlab.store import import_checkpoints

    r = import_checkpoints(src, dest, step_pattern=step_pattern, data=data, metrics=metrics,
                           progress=progress, overwrite=overwrite)
    steps = f" (steps {r.first_step}..{r.last_step})" if r.imported else ""
    skipped = f"; skipped {r.skipped} already in the archive" if r.skipped else ""
    unmatched = (f"; {r.unmatched_metric_steps} metric step(s) match no checkpoint"
                 if r.unmatched_metric_steps else "")
    click.echo(f"{r.path}: imported {r.imported} checkpoint(s){steps} from {r.source} "
               f"[{r.format}]{skipped}; {r.checkpoints} in the archive{unmatched}")
