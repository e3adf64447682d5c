"""``hf-cot compare``: run your own training command for several arms x seeds and print the paired table.

Why: one run of COT against one run of cross-entropy answers nothing (seed noise on a small task is often as large as
the effect), and the baseline a practitioner tries first is not plain cross-entropy but the ``Trainer``'s own
``label_smoothing_factor``. This command runs the same training command once per arm (a list of extra arguments,
e.g. ``--cot_mode joint``) and seed, then compares every arm with the first one *paired by seed*: the mean and spread
over seeds, the mean difference to the first arm on the same seed, and on how many seeds the arm did better.

    hf-cot compare --seeds 0,1,2 --arms ce,label_smoothing,joint --out runs/cmp -- \\
        python examples/text-classification/run_classification.py --do_train --do_eval ...

(also ``python -m hf_cot.compare ...``). The command after ``--`` is any script that takes ``--cot_mode``, ``--seed``
and ``--output_dir`` on its command line and writes ``all_results.json`` into its output folder, as the Hugging Face
example scripts (and this repository's) do. Each run gets the arm's arguments, then ``--seed K --output_dir
<out>/<arm>/seed<K>`` appended (argparse keeps the last value of a repeated option, so these win over the command's
own). Its command line is saved as ``command.txt`` and its stdout/stderr as ``log.txt`` there.

Resumable: a run is skipped when its folder holds ``all_results.json`` *and* the completion marker
``compare_done.json`` that is written only after the script exited with status 0 (an HF script updates
``all_results.json`` after each of train / eval / predict, so that file alone does not mean "finished") and the
marker's command is the one about to run. ``--rerun`` empties the run folders and runs everything again. A failing run
is reported with its command and the tail of its log, the other runs go on, the table lists it, and the exit status is
1.

The table (``compare.md``, ``compare.json``, ``compare.png`` in ``--out``) is built by pure functions
(:func:`paired_differences`, :func:`seeds_won`, :func:`summarize`, :func:`format_markdown`) that take the results as
plain dictionaries, separately from the subprocess runner (:func:`execute`). Only the standard library is needed;
matplotlib draws the plot when it is installed.

See docs/compare.md for the syntax, an example on the repository's BBC News setup, and the output.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shlex
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from .runner import (
    LOG_FILE,
    RESULTS_FILE,
    Run,
    RunOutcome,
    _log_tail,
    completed,
    execute,
    plan_runs,
    run_environment,
)
from .table import (
    DEFAULT_ARM_NAMES,
    DEFAULT_ARMS,
    better_direction,
    format_markdown,
    paired_differences,
    parse_arm,
    plot,
    resolve_arms,
    seeds_won,
    select_metrics,
    summarize,
)

__all__ = [
    "DEFAULT_ARMS",
    "DEFAULT_ARM_NAMES",
    "Run",
    "RunOutcome",
    "better_direction",
    "completed",
    "execute",
    "format_markdown",
    "main",
    "paired_differences",
    "parse_arm",
    "plan_runs",
    "plot",
    "resolve_arms",
    "run_environment",
    "seeds_won",
    "select_metrics",
    "summarize",
]

# --- the command line ------------------------------------------------------------------------------------------------


def build_parser(prog: str = "python -m hf_cot.compare") -> argparse.ArgumentParser:
    arms = "; ".join(f"{name} = {shlex.join(args)}" for name, args in DEFAULT_ARMS.items())
    parser = argparse.ArgumentParser(
        prog=prog,
        usage=f"{prog} [options] -- TRAINING COMMAND ...",
        description=(
            "Run a training command (after --) for arms x seeds, each in <out>/<arm>/seed<K> with --seed K "
            "--output_dir <that folder> appended, and print the table paired by seed against the first arm. The "
            "command must take --cot_mode, --seed and --output_dir on its command line and write all_results.json "
            "(as the Hugging Face example scripts do). Finished runs are skipped. Details: docs/compare.md."
        ),
        epilog=f"Default arms: {arms}.",
    )
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds, paired across arms (default 0,1,2)")
    parser.add_argument(
        "--arms",
        default=None,
        help="comma-separated arms in order, the first is the baseline of every difference (default: "
        f"{','.join(DEFAULT_ARM_NAMES)}, then the --arm ones)",
    )
    parser.add_argument(
        "--arm",
        action="append",
        default=[],
        metavar='NAME="ARGS"',
        help='define an arm, repeatable: --arm w05="--cot_mode joint --complement_weight 0.5" (replaces a default '
        "arm of the same name)",
    )
    parser.add_argument("--out", default=os.path.join("runs", "compare"), help="output folder (default runs/compare)")
    parser.add_argument(
        "--metrics",
        default=None,
        help="comma-separated metrics or patterns (predict_*) of all_results.json, in table order; patterns and the "
        "default leave out epoch, sample counts, runtimes, throughputs and step counts (name them to get them)",
    )
    parser.add_argument(
        "--lower_is_better",
        default="",
        help="comma-separated metrics or patterns that are better when lower (default: names with loss, ece, nll, "
        "error, perplexity, runtime or brier)",
    )
    parser.add_argument(
        "--higher_is_better", default="", help="comma-separated metrics or patterns that are better when higher"
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs at once (default 1); small models leave a GPU mostly idle, so several processes share it well; "
        "without an OMP_NUM_THREADS of yours, each run gets cores // jobs threads",
    )
    parser.add_argument("--rerun", action="store_true", help="run every run again, from emptied folders")
    parser.add_argument("--dry_run", action="store_true", help="print the runs' commands and stop")
    parser.add_argument("--no_plot", action="store_true", help="do not draw compare.png")
    return parser


def _split_list(value: str | None) -> list[str]:
    return [item.strip() for item in (value or "").split(",") if item.strip()]


def main(argv: Sequence[str] | None = None, prog: str = "python -m hf_cot.compare") -> int:
    """Runs the comparison; returns the exit status (0: every run finished, 1: some failed, 2: bad usage)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(prog)
    # Split at the first `--` by hand: everything after it is the user's command, untouched (argparse's REMAINDER
    # would try to read options of the training script as ours).
    if "--" in argv:
        cut = argv.index("--")
        own, command = argv[:cut], argv[cut + 1 :]
    else:
        own, command = argv, []
    opts = parser.parse_args(own)
    if not command:
        parser.error("no training command: put it after --, e.g. -- python run_classification.py --do_train ...")
    scripts = [i for i, word in enumerate(command) if word.endswith(".py")]
    if scripts and len(command) == scripts[0] + 2 and command[-1].endswith(".json"):
        # HF scripts read a lone .json argument as their whole configuration: appended arguments would be ignored.
        parser.error("the command passes its arguments as one .json file; compare appends --seed/--output_dir to the "
                     "command line, so pass the arguments on the command line instead")  # fmt: skip
    try:
        arms = resolve_arms(_split_list(opts.arms) if opts.arms is not None else None, opts.arm)
    except ValueError as err:
        parser.error(str(err))
    try:
        seeds = [int(s) for s in _split_list(opts.seeds)]
    except ValueError:
        seeds = []
    if not seeds or len(set(seeds)) != len(seeds):
        parser.error(f"--seeds {opts.seeds!r}: give distinct integers, e.g. 0,1,2")
    if opts.jobs < 1:
        parser.error(f"--jobs {opts.jobs}: give 1 or more runs at once")
    for flag in ("--seed", "--output_dir"):
        if any(word == flag or word.startswith(flag + "=") for word in command):
            print(f"[compare] note: the command's own {flag} is overridden by the one each run appends", flush=True)

    runs = plan_runs(command, arms, seeds, opts.out)
    print(f"[compare] {len(arms)} arm(s) x {len(seeds)} seed(s) = {len(runs)} runs into {opts.out}", flush=True)
    for name, extra in arms.items():
        print(f"[compare]   {name}: {shlex.join(extra) or '(no extra arguments)'}", flush=True)
    if opts.dry_run:
        for index, run in enumerate(runs, 1):
            done = "done already, would be skipped: " if not opts.rerun and completed(run) is not None else ""
            print(f"[compare] {index}/{len(runs)} {done}{run.command}", flush=True)
        return 0
    env, note = run_environment(opts.jobs)
    if note:
        print(f"[compare] {note}", flush=True)

    def run_one(index: int, run: Run) -> RunOutcome:
        head = f"[compare] {index}/{len(runs)} {run.arm} seed {run.seed}"
        if not opts.rerun and completed(run) is not None:
            outcome = execute(run)
            print(f"{head}: skipped, done already ({os.path.join(run.output_dir, RESULTS_FILE)}; --rerun runs it "
                  "again)", flush=True)  # fmt: skip
            return outcome
        print(f"{head}: running (log: {os.path.join(run.output_dir, LOG_FILE)})", flush=True)
        outcome = execute(run, rerun=opts.rerun, env=env)
        if outcome.status == "done":
            print(f"{head}: done in {outcome.wall_time_s:.1f} s", flush=True)
        else:
            log_path = os.path.join(run.output_dir, LOG_FILE)
            tail = "\n".join(f"    {line}" for line in _log_tail(log_path).splitlines())
            print(f"{head}: FAILED ({outcome.message}) after {outcome.wall_time_s:.1f} s\n"
                  f"[compare]   command: {run.command}\n"
                  f"[compare]   last lines of {log_path}:\n{tail}", flush=True)  # fmt: skip
        return outcome

    # Threads only wait on subprocesses; the outcomes keep the plan's order whatever order the runs finish in.
    with ThreadPoolExecutor(max_workers=opts.jobs) as pool:
        outcomes = list(pool.map(run_one, range(1, len(runs) + 1), runs))

    results = {arm: {} for arm in arms}
    for outcome in outcomes:
        if outcome.status != "failed":
            results[outcome.run.arm][outcome.run.seed] = outcome.results
    failed = [
        {"arm": o.run.arm, "seed": o.run.seed, "returncode": o.returncode, "message": o.message,
         "command": o.run.command, "log": os.path.join(o.run.output_dir, LOG_FILE)}
        for o in outcomes if o.status == "failed"
    ]  # fmt: skip
    lower, higher = _split_list(opts.lower_is_better), _split_list(opts.higher_is_better)
    finished = [r for by_seed in results.values() for r in by_seed.values()]
    patterns = _split_list(opts.metrics) if opts.metrics is not None else None
    metrics = select_metrics(finished, patterns)
    for pattern in patterns or []:
        if finished and not any(fnmatch.fnmatchcase(m, pattern) for m in metrics):
            print(
                f"[compare] note: --metrics {pattern!r} matches no numeric key of the runs' {RESULTS_FILE}", flush=True
            )
    try:
        directions = {m: better_direction(m, lower, higher) for m in metrics}
    except ValueError as err:
        parser.error(str(err))
    summary = summarize(results, metrics, directions)
    baseline = next(iter(arms))

    os.makedirs(opts.out, exist_ok=True)
    header = (
        f"hf-cot compare: {len(arms)} arm(s) x {len(seeds)} seed(s), paired by seed against `{baseline}` (mean diff = "
        f"arm - {baseline} on the same seed; std = sample standard deviation over seeds; seeds won = seeds on which "
        "the arm is better, in the metric's `better` direction).\n\n"
        f"Command: `{shlex.join(command)}`\n\n"
        + "".join(f"- `{name}`: `{shlex.join(extra)}`\n" for name, extra in arms.items())
    )
    table = format_markdown(summary, failed, baseline)
    with open(os.path.join(opts.out, "compare.md"), "w", encoding="utf-8") as f:
        f.write(header + "\n" + table)
    report = {
        "command": command,
        "arms": arms,
        "seeds": seeds,
        "baseline": baseline,
        "runs": [
            {
                "arm": o.run.arm,
                "seed": o.run.seed,
                "status": o.status,
                "returncode": o.returncode,
                "wall_time_s": o.wall_time_s,
                "output_dir": o.run.output_dir,
                "command": o.run.command,
            }
            for o in outcomes
        ],  # fmt: skip
        "failed": failed,
        "metrics": summary,
    }
    with open(os.path.join(opts.out, "compare.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    print("\n" + table, flush=True)
    print(f"[compare] table: {os.path.join(opts.out, 'compare.md')} and compare.json", flush=True)
    if not opts.no_plot:
        print(f"[compare] {plot(summary, os.path.join(opts.out, 'compare.png'))}", flush=True)
    if failed:
        print(f"[compare] {len(failed)} of {len(runs)} runs failed: "
              + ", ".join(f"{r['arm']} seed {r['seed']}" for r in failed), file=sys.stderr, flush=True)  # fmt: skip
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
