"""``ckptlab verify RUN``: read every chunk, check the archive against its commit record.

Register with ``cli.add_command(verify_cmd)``; library errors (a missing archive, a writer
holding the lock during ``--repair``) are ``CkptlabError``s, which the group turns into
``Error: ...``.
"""

from __future__ import annotations

import json

import click

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.command("verify", context_settings=CONTEXT)
@click.argument("path")
@click.option("--repair", is_flag=True,
              help="Truncate to the last fully valid checkpoint and fix what can be fixed "
                   "(asks first).")
@click.option("--yes", "-y", is_flag=True, help="With --repair: do not ask.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
def verify_cmd(ctx, path, repair, yes, as_json):
    """Check every chunk of the archive at PATH (checksums, commit record, steps, shapes).

    Exits 1 when an error is found (a damaged chunk, missing rows, steps out of order, ...),
    naming each array, chunk and the checkpoints it holds; notes (e.g. rows a killed writer
    left past the commit) do not fail. --repair keeps the longest intact prefix of
    checkpoints, rewrites the commit record and says how many checkpoints it dropped.
    """
    from ckptlab.store.verify import repair as repair_archive
    from ckptlab.store.verify import verify

    report = verify(path)
    echo = (lambda r: click.echo(json.dumps(r.to_dict(), indent=2))) if as_json else (
        lambda r: click.echo(r.summary()))
    if not (repair and report.needs_repair):
        echo(report)
        if repair:
            click.echo("nothing to repair")
        ctx.exit(0 if report.ok else 1)
    if not as_json:
        echo(report)
    if not yes and not click.confirm(report.repair_question(), default=False, err=True):
        click.echo("nothing changed")
        ctx.exit(0 if report.ok else 1)
    after = repair_archive(path, report)
    echo(after)
    ctx.exit(0 if after.ok else 1)
