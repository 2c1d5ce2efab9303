#!/usr/bin/env bash
# Set up the environment, then run the whole test suite. Extra arguments go to pytest.
source "$(dirname "$0")/setup.sh"
exec python -m pytest "$@"
