#!/usr/bin/env bash
# Set up the environment, lint (ruff, the project's line length), then run the whole test suite
# in two worker processes, a test file each at a time (pytest-xdist): most of the suite's time is
# XLA compiling tiny programs, one thread each, so a second process uses the second core.
# HOURJAX_TEST_WORKERS sets the number (0: the tests run in this process). Extra arguments go to pytest.
source "$(dirname "$0")/setup.sh"
ruff check --quiet . || { echo "[test] ruff found problems (ruff check . --fix mends some)" >&2; exit 1; }
WORKERS="${HOURJAX_TEST_WORKERS:-2}"
PARALLEL=()
[ "$WORKERS" = 0 ] || PARALLEL=(-n "$WORKERS" --dist loadfile)
exec python -m pytest "${PARALLEL[@]}" "$@"
