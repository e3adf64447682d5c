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
import math
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

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
    "seeds_won",
    "select_metrics",
    "summarize",
]

# The arms a practitioner compares first: plain cross-entropy (the first arm is the baseline of every difference),
# the Trainer's own label smoothing, and the COT modes. `--cot_mode off` makes COTTrainer the plain Trainer.
DEFAULT_ARMS: dict[str, list[str]] = {
    "ce": ["--cot_mode", "off"],
    "label_smoothing": ["--cot_mode", "off", "--label_smoothing_factor", "0.1"],
    "joint": ["--cot_mode", "joint"],
    "alternating": ["--cot_mode", "alternating"],
    "guided": ["--cot_mode", "guided"],
}
# What runs when --arms is not given: COT (the library's default mode) against CE and against label smoothing.
DEFAULT_ARM_NAMES = ("ce", "label_smoothing", "joint")

RESULTS_FILE = "all_results.json"
DONE_FILE = "compare_done.json"  # the completion marker: written after a run exited 0 with its results on disk
COMMAND_FILE = "command.txt"
LOG_FILE = "log.txt"
LOG_TAIL_LINES = 20

# Keys of an HF all_results.json that describe the run rather than the model (sizes, speed, step counts): left out of
# the table unless --metrics names them.
BOOKKEEPING = ("epoch", "total_flos", "*_samples", "*_runtime", "*_per_second", "*_steps")
# A metric whose name holds one of these words is better when lower; any other, when higher (accuracy, F1, BLEU,
# chrF, complement entropy, attack accuracy). --lower_is_better / --higher_is_better override per metric.
LOWER_IS_BETTER_WORDS = frozenset({"loss", "ece", "nll", "error", "perplexity", "runtime", "brier"})

_ARM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")  # a folder name on every OS, no path separators


# --- arms, metrics, directions ---------------------------------------------------------------------------------------


def parse_arm(spec: str) -> tuple[str, list[str]]:
    """Parses one ``--arm`` value, ``NAME="--flag value ..."`` (shell-quoted arguments), into ``(name, arguments)``.

    Args:
        spec (`str`): the option's value, e.g. ``'joint_w0.5=--cot_mode joint --complement_weight 0.5'``.

    Returns:
        `tuple[str, list[str]]`: the arm's name (used as its folder name) and its extra arguments.

    Raises:
        `ValueError`: no ``=``, a name that is not a plain folder name, or unbalanced quotes.
    """
    name, sep, arguments = spec.partition("=")
    name = name.strip()
    if not sep:
        raise ValueError(
            f'--arm {spec!r}: expected NAME="ARGUMENTS", e.g. --arm w05="--cot_mode joint --complement_weight 0.5"'
        )
    if not _ARM_NAME.match(name):
        raise ValueError(
            f"--arm {spec!r}: the name {name!r} must be letters, digits, '_', '.', '+' or '-' (it names a folder)"
        )
    try:
        return name, shlex.split(arguments)
    except ValueError as err:
        raise ValueError(f"--arm {spec!r}: {err}") from err


def resolve_arms(names: Sequence[str] | None, custom: Iterable[str] = ()) -> dict[str, list[str]]:
    """The arms to run, in order (the first is the baseline).

    Args:
        names (`Sequence[str]`, *optional*): the ``--arms`` list; each a default arm or one defined by ``custom``.
            Default: ``DEFAULT_ARM_NAMES`` followed by the custom arms in their order.
        custom (`Iterable[str]`): ``--arm NAME="ARGUMENTS"`` values; a custom arm named like a default one replaces it.

    Returns:
        `dict[str, list[str]]`: arm name -> extra arguments, in run order.
    """
    defined = {name: list(arguments) for name, arguments in DEFAULT_ARMS.items()}
    custom_names = []
    for spec in custom:
        name, arguments = parse_arm(spec)
        if name in custom_names:
            raise ValueError(f"--arm {name!r} is defined twice")
        defined[name] = arguments
        custom_names.append(name)
    if names is None:
        names = list(DEFAULT_ARM_NAMES) + [n for n in custom_names if n not in DEFAULT_ARM_NAMES]
    unknown = [n for n in names if n not in defined]
    if unknown:
        raise ValueError(
            f"unknown arm(s) {unknown}: the defaults are {list(DEFAULT_ARMS)}; define others with "
            '--arm NAME="ARGUMENTS"'
        )
    duplicates = sorted({n for n in names if list(names).count(n) > 1})
    if duplicates:
        raise ValueError(f"arm(s) {duplicates} named more than once in --arms")
    if not names:
        raise ValueError("no arms to run")
    return {name: defined[name] for name in names}


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def better_direction(metric: str, lower: Iterable[str] = (), higher: Iterable[str] = ()) -> str:
    """Whether a metric is better when ``"higher"`` or ``"lower"``.

    Args:
        metric (`str`): the key in ``all_results.json``, e.g. ``"eval_accuracy"`` or ``"predict_ece"``.
        lower (`Iterable[str]`): names or shell-style patterns (``"*_margin"``) forced to lower-is-better.
        higher (`Iterable[str]`): names or patterns forced to higher-is-better.

    Returns:
        `str`: ``"lower"`` when the metric matches ``lower``, or, matching neither list, when a word of its name is
        one of ``LOWER_IS_BETTER_WORDS`` (loss, ece, nll, error, perplexity, runtime, brier); ``"higher"`` otherwise.

    Raises:
        `ValueError`: the metric matches both lists.
    """
    lower, higher = list(lower), list(higher)
    in_lower, in_higher = _matches(metric, lower), _matches(metric, higher)
    if in_lower and in_higher:
        raise ValueError(f"metric {metric!r} matches both --lower_is_better and --higher_is_better")
    if in_lower or in_higher:
        return "lower" if in_lower else "higher"
    words = set(re.split(r"[^a-z0-9]+", metric.lower()))
    return "lower" if words & LOWER_IS_BETTER_WORDS else "higher"


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def select_metrics(results: Iterable[Mapping], patterns: Sequence[str] | None = None) -> list[str]:
    """The metrics of the table: numeric keys of the runs' results.

    Args:
        results (`Iterable[Mapping]`): the ``all_results.json`` of each finished run.
        patterns (`Sequence[str]`, *optional*): names or shell-style patterns (``"predict_*"``), in table order. A
            pattern leaves out the bookkeeping keys (``BOOKKEEPING``: epoch, sample counts, runtimes, throughputs,
            step counts); an exact name takes any key. Default: ``["*"]``, every numeric key but the bookkeeping ones.

    Returns:
        `list[str]`: the metric names, each present as a number in at least one run.
    """
    found: list[str] = []
    for result in results:
        found += [k for k, v in result.items() if _is_number(v) and k not in found]
    chosen: list[str] = []
    for pattern in ["*"] if patterns is None else patterns:
        if pattern in found:
            chosen += [pattern] if pattern not in chosen else []
            continue
        chosen += [
            k
            for k in sorted(found)
            if fnmatch.fnmatchcase(k, pattern) and not _matches(k, BOOKKEEPING) and k not in chosen
        ]
    return chosen


# --- the paired statistics (pure) ------------------------------------------------------------------------------------


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n - 1); the std is None below two values (no spread to estimate)."""
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def paired_differences(arm: Mapping[int, float], baseline: Mapping[int, float]) -> dict[int, float]:
    """``arm[seed] - baseline[seed]`` for every seed both have, in seed order.

    Args:
        arm (`Mapping[int, float]`): one metric of one arm, by seed.
        baseline (`Mapping[int, float]`): the same metric of the first arm, by seed.

    Returns:
        `dict[int, float]`: the per-seed differences (seeds missing from either side are left out: a failed run
        pairs with nothing).
    """
    return {seed: arm[seed] - baseline[seed] for seed in sorted(arm) if seed in baseline}


def seeds_won(differences: Mapping[int, float], better: str) -> tuple[int, int, int]:
    """On how many seeds the arm beat, tied with and lost to the baseline.

    Args:
        differences (`Mapping[int, float]`): :func:`paired_differences` of one metric.
        better (`str`): ``"higher"`` (a positive difference wins) or ``"lower"`` (a negative one wins).

    Returns:
        `tuple[int, int, int]`: ``(won, tied, lost)``; a difference of exactly 0 is a tie.
    """
    if better not in ("higher", "lower"):
        raise ValueError(f"better must be 'higher' or 'lower', not {better!r}")
    sign = 1 if better == "higher" else -1
    won = sum(1 for d in differences.values() if sign * d > 0)
    lost = sum(1 for d in differences.values() if sign * d < 0)
    return won, len(differences) - won - lost, lost


def summarize(
    results: Mapping[str, Mapping[int, Mapping]],
    metrics: Sequence[str],
    directions: Mapping[str, str],
) -> dict:
    """The paired table as a dictionary (what ``compare.json`` holds under ``"metrics"``).

    Args:
        results (`Mapping[str, Mapping[int, Mapping]]`): arm -> seed -> that run's ``all_results.json``; the first arm
            is the baseline. Failed runs are simply absent.
        metrics (`Sequence[str]`): the metrics, in table order.
        directions (`Mapping[str, str]`): metric -> ``"higher"`` or ``"lower"`` (which is better).

    Returns:
        `dict`: ``{metric: {"better": ..., "arms": {arm: {"values": {seed: v}, "n", "mean", "std", "vs_baseline":
        {"differences": {seed: d}, "n", "mean", "std", "won", "tied", "lost"} or None for the baseline}}}}``; "std"
        is the sample standard deviation (n - 1), None with fewer than two seeds.
    """
    arms = list(results)
    table: dict = {}
    for metric in metrics:
        values = {
            arm: {seed: float(r[metric]) for seed, r in sorted(runs.items()) if _is_number(r.get(metric))}
            for arm, runs in results.items()
        }
        better = directions[metric]
        per_arm = {}
        for arm in arms:
            mean, std = _mean_std(list(values[arm].values()))
            entry = {"values": values[arm], "n": len(values[arm]), "mean": mean, "std": std, "vs_baseline": None}
            if arm != arms[0]:
                diffs = paired_differences(values[arm], values[arms[0]])
                d_mean, d_std = _mean_std(list(diffs.values()))
                won, tied, lost = seeds_won(diffs, better)
                entry["vs_baseline"] = {
                    "differences": diffs, "n": len(diffs), "mean": d_mean, "std": d_std,
                    "won": won, "tied": tied, "lost": lost,
                }  # fmt: skip
            per_arm[arm] = entry
        table[metric] = {"better": better, "arms": per_arm}
    return table


def _fmt(value: float | None, sign: bool = False) -> str:
    if value is None:
        return "—"
    if not math.isfinite(value):
        return str(value)
    # 4 decimals resolve one example in 10,000 on a [0, 1] metric; larger numbers (losses, BLEU) need fewer.
    digits = 4 if abs(value) < 10 else 2
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def format_markdown(summary: Mapping, failed: Sequence[Mapping] = (), baseline: str | None = None) -> str:
    """The paired table in markdown: one row per metric and arm.

    Args:
        summary (`Mapping`): :func:`summarize`'s output.
        failed (`Sequence[Mapping]`): the failed runs (``{"arm", "seed", "returncode", "command", "log"}``), listed
            under the table.
        baseline (`str`, *optional*): the first arm's name (default: the first arm of the summary).

    Returns:
        `str`: the table (and the failed runs, if any).
    """
    arms = list(next(iter(summary.values()))["arms"]) if summary else []
    baseline = baseline or (arms[0] if arms else "the first arm")
    failed_seeds: dict[str, list[int]] = {}
    for run in failed:
        failed_seeds.setdefault(run["arm"], []).append(run["seed"])
    lines = [
        f"| metric | better | arm | seeds | mean | std | vs {baseline}: mean diff ± std | seeds won vs {baseline} |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for metric, entry in summary.items():
        for arm, stats in entry["arms"].items():
            seeds = str(stats["n"])
            if arm in failed_seeds:
                bad = failed_seeds[arm]
                seeds += f" (seed{'s' if len(bad) > 1 else ''} {', '.join(map(str, bad))} failed)"
            paired = stats["vs_baseline"]
            if paired is None:
                diff = won = "(baseline)"
            elif paired["n"] == 0:
                diff = won = "—"
            else:
                diff = f"{_fmt(paired['mean'], sign=True)} ± {_fmt(paired['std'])}"
                won = f"{paired['won']}/{paired['n']}" + (f" ({paired['tied']} tied)" if paired["tied"] else "")
            lines.append(
                f"| {metric} | {entry['better']} | {arm} | {seeds} | {_fmt(stats['mean'])} | {_fmt(stats['std'])} "
                f"| {diff} | {won} |"
            )
    text = "\n".join(lines) + "\n"
    if failed:
        text += "\nFailed runs (left out of the table; their logs say why):\n\n"
        text += "| arm | seed | exit status | command | log |\n|---|---|---|---|---|\n"
        text += "".join(
            f"| {r['arm']} | {r['seed']} | {r['returncode']} | `{r['command']}` | {r['log']} |\n" for r in failed
        )
    return text


# --- the runner ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One training run: an arm on a seed."""

    arm: str
    seed: int
    output_dir: str
    argv: tuple[str, ...]

    @property
    def command(self) -> str:
        """The command line as a shell would take it (what command.txt holds)."""
        return shlex.join(self.argv)


@dataclass
class RunOutcome:
    """What became of a run: ``status`` is ``"done"`` (ran now), ``"skipped"`` (done already) or ``"failed"``."""

    run: Run
    status: str
    returncode: int | None = None
    wall_time_s: float | None = None
    message: str = ""
    results: dict = field(default_factory=dict)


def plan_runs(command: Sequence[str], arms: Mapping[str, Sequence[str]], seeds: Sequence[int], out: str) -> list[Run]:
    """Every run, seeds outermost: an interrupted comparison still has every arm on the seeds it reached.

    Args:
        command (`Sequence[str]`): the user's training command (program and arguments).
        arms (`Mapping[str, Sequence[str]]`): arm name -> extra arguments.
        seeds (`Sequence[int]`): the seeds.
        out (`str`): the output folder; run ``(arm, seed)`` goes to ``<out>/<arm>/seed<seed>``.

    Returns:
        `list[Run]`: each run's argv is the command, the arm's arguments, ``--seed`` and ``--output_dir``.
    """
    runs = []
    for seed in seeds:
        for arm, extra in arms.items():
            output_dir = os.path.join(out, arm, f"seed{seed}")
            argv = (*command, *extra, "--seed", str(seed), "--output_dir", output_dir)
            runs.append(Run(arm, seed, output_dir, argv))
    return runs


def _read_json(path: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _log_tail(path: str, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-lines:]).rstrip()
    except OSError:
        return ""


def completed(run: Run) -> dict | None:
    """The results of a finished run, or None: both its marker and ``all_results.json`` are there, and the marker
    records the same command (a run made with other arguments is not this run)."""
    marker = _read_json(os.path.join(run.output_dir, DONE_FILE))
    results = _read_json(os.path.join(run.output_dir, RESULTS_FILE))
    if not isinstance(marker, dict) or not isinstance(results, dict) or marker.get("argv") != list(run.argv):
        return None
    return results


def execute(run: Run, rerun: bool = False) -> RunOutcome:
    """Runs one training command unless it finished before; never raises for a failing command.

    Args:
        run (`Run`): the run.
        rerun (`bool`): run it again even if it finished; its folder is emptied first, so that the script does not
            resume from checkpoints of the old run (HF scripts resume from the newest ``checkpoint-*`` they find).
            Without it, a folder with no completion marker (an interrupted run) is kept for the script to resume.

    Returns:
        `RunOutcome`: ``"skipped"`` with the stored results, ``"done"`` with the new ones, or ``"failed"`` with the
        exit status and a message (why, and the tail of log.txt).
    """
    marker_path = os.path.join(run.output_dir, DONE_FILE)
    if not rerun:
        results = completed(run)
        if results is not None:
            wall = (_read_json(marker_path) or {}).get("wall_time_s")
            return RunOutcome(run, "skipped", 0, wall, "done already", results)
    if os.path.isdir(run.output_dir) and (rerun or os.path.isfile(marker_path)):
        # --rerun, or finished before with other arguments: start from an empty folder, not from its checkpoints.
        shutil.rmtree(run.output_dir)
    # Otherwise the folder holds an interrupted run (or nothing): kept, so that the script may resume from its
    # checkpoints; only its results file goes, so that what is read afterwards is this run's.
    os.makedirs(run.output_dir, exist_ok=True)
    results_path = os.path.join(run.output_dir, RESULTS_FILE)
    if os.path.isfile(results_path):
        os.remove(results_path)
    with open(os.path.join(run.output_dir, COMMAND_FILE), "w", encoding="utf-8") as f:
        f.write(run.command + "\n")
    log_path = os.path.join(run.output_dir, LOG_FILE)
    start = time.monotonic()
    with open(log_path, "w", encoding="utf-8") as log:
        try:
            returncode = subprocess.run(
                run.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            ).returncode
        except OSError as err:  # the program does not exist or cannot be executed
            log.write(f"[compare] could not start the command: {err}\n")
            returncode = 127
    wall = time.monotonic() - start
    results = _read_json(results_path) if returncode == 0 else None
    if returncode != 0 or not isinstance(results, dict):
        why = f"exit status {returncode}" if returncode != 0 else f"exit status 0 but no readable {RESULTS_FILE}"
        return RunOutcome(run, "failed", returncode, wall, why)
    with open(marker_path, "w", encoding="utf-8") as f:
        json.dump({"argv": list(run.argv), "returncode": 0, "wall_time_s": round(wall, 3)}, f, indent=2)
    return RunOutcome(run, "done", 0, wall, "", results)


# --- the plot (matplotlib, optional) ---------------------------------------------------------------------------------

MAX_PLOTTED_METRICS = 12


def plot(summary: Mapping, path: str) -> str:
    """One panel per metric: each seed's value per arm (a grey line joins the arms of one seed, so pairing is
    visible) and the mean ± std. Returns what was done, for the log (matplotlib missing: nothing, and says so)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return "matplotlib is not installed: no plot (pip install matplotlib, then run the same command again)"
    metrics = list(summary)[:MAX_PLOTTED_METRICS]
    if not metrics:
        return "nothing to plot"
    cols = min(3, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    # Figure without pyplot: no GUI backend is chosen, so this works on a headless machine and in threads.
    fig = Figure(figsize=(4.2 * cols, 3.2 * rows), layout="constrained")
    for index, metric in enumerate(metrics):
        ax = fig.add_subplot(rows, cols, index + 1)
        arms = list(summary[metric]["arms"])
        stats = summary[metric]["arms"]
        seeds = sorted({s for a in arms for s in stats[a]["values"]})
        for seed in seeds:
            xs = [i for i, a in enumerate(arms) if seed in stats[a]["values"]]
            ax.plot(xs, [stats[arms[i]]["values"][seed] for i in xs], color="0.6", marker="o", markersize=3, lw=0.8)
        means = [
            (i, stats[a]["mean"], stats[a]["std"] or 0.0) for i, a in enumerate(arms) if stats[a]["mean"] is not None
        ]
        if means:
            xs, ys, es = zip(*means, strict=True)
            ax.errorbar(xs, ys, yerr=es, fmt="D", color="C3", capsize=4, label="mean ± std", zorder=3)
        ax.set_xticks(range(len(arms)), [a if stats[a]["n"] else f"{a}\n(no result)" for a in arms], rotation=20)
        ax.set_title(f"{metric} ({summary[metric]['better']} is better)", fontsize=9)
        ax.grid(alpha=0.3)
    fig.suptitle("grey: one seed across arms; red: mean ± std over seeds", fontsize=9)
    fig.savefig(path, dpi=120)
    note = f" (the first {MAX_PLOTTED_METRICS} metrics; --metrics picks them)" if len(summary) > len(metrics) else ""
    return f"plot: {path}{note}"


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
    for flag in ("--seed", "--output_dir"):
        if any(word == flag or word.startswith(flag + "=") for word in command):
            print(f"[compare] note: the command's own {flag} is overridden by the one each run appends", flush=True)

    runs = plan_runs(command, arms, seeds, opts.out)
    print(f"[compare] {len(arms)} arm(s) x {len(seeds)} seed(s) = {len(runs)} runs into {opts.out}", flush=True)
    for name, extra in arms.items():
        print(f"[compare]   {name}: {shlex.join(extra) or '(no extra arguments)'}", flush=True)
    if opts.dry_run:
        for index, run in enumerate(runs, 1):
            print(f"[compare] {index}/{len(runs)} {run.command}", flush=True)
        return 0

    outcomes = []
    for index, run in enumerate(runs, 1):
        head = f"[compare] {index}/{len(runs)} {run.arm} seed {run.seed}"
        if not opts.rerun and completed(run) is not None:
            outcome = execute(run)
            print(f"{head}: skipped, done already ({os.path.join(run.output_dir, RESULTS_FILE)}; --rerun runs it "
                  "again)", flush=True)  # fmt: skip
        else:
            print(f"{head}: running (log: {os.path.join(run.output_dir, LOG_FILE)})", flush=True)
            outcome = execute(run, rerun=opts.rerun)
            if outcome.status == "done":
                print(f"{head}: done in {outcome.wall_time_s:.1f} s", flush=True)
            else:
                log_path = os.path.join(run.output_dir, LOG_FILE)
                tail = "\n".join(f"    {line}" for line in _log_tail(log_path).splitlines())
                print(f"{head}: FAILED ({outcome.message}) after {outcome.wall_time_s:.1f} s\n"
                      f"[compare]   command: {run.command}\n"
                      f"[compare]   last lines of {log_path}:\n{tail}", flush=True)  # fmt: skip
        outcomes.append(outcome)

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
