"""What produced a benchmark result: the hf-cot version and the git commit, for every benchmark's JSON."""

from __future__ import annotations

import os
import subprocess

import hf_cot


def git_commit(path: str | None = None) -> str | None:
    """``git rev-parse HEAD`` of the checkout holding ``path`` (default: this file), with ``-dirty`` when tracked
    files have uncommitted changes; None when it is not a git checkout or git is not installed."""
    cwd = os.path.dirname(os.path.abspath(path or __file__))

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30, check=False)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return None
    changes = git("status", "--porcelain", "--untracked-files=no")
    return f"{commit}-dirty" if changes else commit


def provenance() -> dict:
    """``{"hf_cot_version": ..., "git_commit": ...}``, to merge into a benchmark's JSON result."""
    return {"hf_cot_version": hf_cot.__version__, "git_commit": git_commit()}
