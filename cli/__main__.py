"""``python -m cli``: the same app as the ``ckptlab`` console script."""

from .main import cli

cli(prog_name="ckptlab")
