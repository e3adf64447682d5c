"""``hf-cot`` (installed by ``pip install hf-cot``) and ``python -m hf_cot``: the package's commands.

    hf-cot compare [options] -- TRAINING COMMAND ...   # arms x seeds of your training command, paired table

Why a dispatcher: one console script that grows subcommands instead of one script per tool. Each subcommand is a
module with a ``main(argv, prog)`` returning the exit status, imported only when named, so ``hf-cot --help`` loads
neither torch nor transformers.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

# subcommand -> (module, one-line description)
COMMANDS = {
    "compare": (
        "hf_cot.compare",
        "run a training command for arms (CE, label smoothing, COT modes, ...) x seeds and print the paired table",
    ),
}


def _usage(prog: str) -> str:
    lines = [f"usage: {prog} COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<10} {description}" for name, (_, description) in COMMANDS.items()]
    lines += ["", f"`{prog} COMMAND --help` describes one."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None, prog: str = "hf-cot") -> int:
    """Dispatches ``argv[0]`` to its subcommand; returns the exit status (2 for an unknown or missing command)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage(prog), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"{prog}: unknown command {name!r}\n\n{_usage(prog)}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return module.main(rest, prog=f"{prog} {name}")


if __name__ == "__main__":
    sys.exit(main(prog="python -m hf_cot"))
