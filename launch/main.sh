#!/usr/bin/env bash
# The main job on its embedded default: set up the environment, then run the demo.
# Extra arguments go to `python -m launch.demo` (see --help).
source "$(dirname "$0")/setup.sh"
exec python -m launch.demo "$@"
