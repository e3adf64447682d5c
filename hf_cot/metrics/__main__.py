"""Command line for the shipped metric modules: print their paths for scripts that take a metric *name*.

Why: scripts such as the upstream transformers ``run_classification.py`` pass ``--metric_name`` straight to
``evaluate.load``, which resolves a bare name on the Hub (so fails offline) but loads a folder path from disk. A
shell substitution hands them the path without editing the script::

    python run_classification.py ... --metric_name "$(python -m hf_cot.metrics path classification_metrics)"

Usage: ``python -m hf_cot.metrics list`` (one name a line) and ``python -m hf_cot.metrics path NAME`` (the absolute
folder path, as :func:`hf_cot.metrics.metric_path` returns it). An unknown name exits with status 2 and names the
valid ones. Nothing here imports ``evaluate``: printing a path must work where only the package is installed.
"""

from __future__ import annotations

import argparse
import sys

from hf_cot.metrics import available, metric_path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hf_cot.metrics",
        description="Local `evaluate` metric modules shipped with hf_cot: evaluate.load(PATH) works offline.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{list,path}")
    commands.add_parser("list", help="print the available metric names, one a line")
    path = commands.add_parser(
        "path", help="print the absolute path of a metric module, for evaluate.load / --metric_name"
    )
    path.add_argument("name", help=f"one of: {', '.join(available())}")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "list":
        print("\n".join(available()))
        return 0
    try:
        print(metric_path(args.name))
    except ValueError as err:
        parser.error(str(err))  # usage + message on stderr, exit status 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
