"""The pure half of `hf_cot.compare`: arms, which metrics and in which direction, the paired statistics, the
markdown table and the plot. Plain dictionaries in, plain dictionaries out: no subprocess, no torch."""

from __future__ import annotations

import fnmatch
import math
import re
import shlex
import statistics
from collections.abc import Iterable, Mapping, Sequence

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
        pairs with nothing). Two values equal up to floating-point rounding (relative 1e-9) differ by exactly 0: a
        tie, not a seed won or lost (balanced accuracy on a balanced test set is the accuracy, summed in another
        order).
    """
    return {
        seed: 0.0 if math.isclose(arm[seed], baseline[seed], rel_tol=1e-9) else arm[seed] - baseline[seed]
        for seed in sorted(arm)
        if seed in baseline
    }


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
