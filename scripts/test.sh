#!/usr/bin/env bash
# Install (first time only) and run the test suite. Extra arguments go to pytest (e.g. -m slow for the long ones).
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
set +e
python -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi
exit "$rc"
