#!/usr/bin/env bash
# The project's lint: `ruff check` and `ruff format --check` over the tree (configuration in pyproject.toml), with the
# ruff that scripts/setup_env.sh installs (pinned in the test extra). Fails on any finding.
# Usage: bash scripts/lint.sh    (fix with: ruff check --fix . && ruff format .)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
. "${HF_COT_VENV:-.venv}/bin/activate"
ruff --version
ruff check .
ruff format --check .
