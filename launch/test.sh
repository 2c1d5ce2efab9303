#!/usr/bin/env bash
# Set up the environment, lint (ruff, the project's line length), then run the whole test suite.
# Extra arguments go to pytest.
source "$(dirname "$0")/setup.sh"
ruff check --quiet . || { echo "[test] ruff found problems (ruff check . --fix mends some)" >&2; exit 1; }
exec python -m pytest "$@"
