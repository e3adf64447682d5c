"""The runner half of `hf_cot.compare`: one subprocess per (arm, seed), its folder, log and completion marker;
finished runs are skipped, failing ones reported with their command and log tail."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

RESULTS_FILE = "all_results.json"
DONE_FILE = "compare_done.json"  # the completion marker: written after a run exited 0 with its results on disk
COMMAND_FILE = "command.txt"
LOG_FILE = "log.txt"
LOG_TAIL_LINES = 20


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


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the platform tells, else ``os.cpu_count()``)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def run_environment(jobs: int, environ: Mapping[str, str] | None = None, cores: int | None = None):
    """The environment of each run when ``jobs`` run at once, and a note saying why, or ``(None, "")`` to inherit.

    PyTorch starts one intra-op thread per core in every process, so N processes on N cores oversubscribe them (two
    MiniLM runs on 2 cores ran 4x slower than with one thread each). With more than one job and no
    ``OMP_NUM_THREADS`` of the user's, each run gets ``cores // jobs`` threads (at least 1); a value the user set is
    kept as it is.
    """
    environ = os.environ if environ is None else environ
    if jobs <= 1 or "OMP_NUM_THREADS" in environ:
        return None, ""
    cores = available_cores() if cores is None else cores
    threads = max(1, cores // jobs)
    note = (f"{jobs} runs at once on {cores} core(s): each run gets OMP_NUM_THREADS={threads} (set OMP_NUM_THREADS "
            "yourself to choose)")  # fmt: skip
    return {**environ, "OMP_NUM_THREADS": str(threads)}, note


def execute(run: Run, rerun: bool = False, env: Mapping[str, str] | None = None) -> RunOutcome:
    """Runs one training command unless it finished before; never raises for a failing command.

    Args:
        run (`Run`): the run.
        rerun (`bool`): run it again even if it finished; its folder is emptied first, so that the script does not
            resume from checkpoints of the old run (HF scripts resume from the newest ``checkpoint-*`` they find).
            Without it, a folder with no completion marker (an interrupted run) is kept for the script to resume.
        env (`Mapping[str, str]`, *optional*): the command's environment (default: this process's).

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
                run.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
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
