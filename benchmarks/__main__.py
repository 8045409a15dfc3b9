"""Run the benchmarks: ``python -m benchmarks [NAME ...] [--json PATH] [OPTIONS]``.

Without names every ``bench_<name>.py`` module of this package runs, in name order. Options
after the names other than ``--json`` and ``--list`` are passed to each selected benchmark's
``main`` (so they are meant for one benchmark: ``python -m benchmarks store --steps 500``;
``python -m benchmarks store -h`` lists them). ``--json PATH`` writes every benchmark's
results into one file, keyed by name.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from pathlib import Path

from ckptlab.errors import CkptlabError

from . import common

PREFIX = "bench_"


def discover() -> list[str]:
    """Names of the benchmark modules (``bench_store.py`` -> ``"store"``), sorted."""
    pkg = Path(__file__).resolve().parent
    return sorted(
        m.name[len(PREFIX) :]
        for m in pkgutil.iter_modules([str(pkg)])
        if m.name.startswith(PREFIX) and not m.ispkg
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Run ckptlab's speed and size benchmarks.",
        epilog="Further options go to the selected benchmark; "
        "'python -m benchmarks NAME -h' lists them.",
        add_help=False,
    )
    p.add_argument("-h", "--help", action="store_true", help="show this help and exit")
    p.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    p.add_argument("--json", metavar="PATH", type=Path, help="write all results as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    names = []
    while argv and not argv[0].startswith("-"):
        names.append(argv.pop(0))
    parser = _parser()
    opts, rest = parser.parse_known_args(argv)
    known = discover()
    if opts.help and not names:
        parser.print_help()
        print(f"\nbenchmarks: {', '.join(known)}")
        return 0
    if opts.help:
        rest = ["--help", *rest]
    if opts.list:
        print("\n".join(known))
        return 0
    unknown = [n for n in names if n not in known]
    if unknown:
        parser.error(
            f"unknown benchmark(s) {', '.join(map(repr, unknown))}; known: {', '.join(known)}"
        )
    results = {}
    for name in names or known:
        module = importlib.import_module(f"{__package__}.{PREFIX}{name}")
        try:
            results[name] = module.main(rest)
        except CkptlabError as exc:  # a bad option: one line, like the CLI, no traceback
            print(f"Error: {name}: {exc}", file=sys.stderr)
            return 2
        print()
    if opts.json is not None:
        common.write_json(opts.json, results)
        print(f"results written to {opts.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
