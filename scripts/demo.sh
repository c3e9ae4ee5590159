#!/usr/bin/env bash
# The seed's demo, with beaver_sim: start `beaver run`, enqueue data/jobs.json (100 jobs), let some
# finish, kill -9 the controller, restart it, print the recovery time, wait for every job, print the
# final status, and fail if any acknowledged job is missing or counted twice. All of it is
# `beaver demo` (beaver_sim/cli.py); extra arguments go to it (--data-dir DIR, --config FILE, --jobs F).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -x .venv/bin/beaver ]]; then
    exec .venv/bin/beaver demo "$@"
fi
exec beaver demo "$@"
