#!/usr/bin/env bash
# The test command from the README: installs what is needed, then lint, types, fast sans-IO
# tests, and finally the namespace tests through the real kernel path.
set -euo pipefail
cd "$(dirname "$0")/.."
./deploy/install-deps.sh
echo "== ruff"; python3 -m ruff check swarmcache interceptor cache swarm tests bench
echo "== mypy --strict"; python3 -m mypy
# One pytest run, sans-IO tests first (collection order), so there is one closing line.
echo "== tests"; python3 -m pytest -q -p no:cacheprovider tests/unit tests/netns "$@"
