#!/usr/bin/env bash
# Runs where tracing works (host or lab guest): recorder + workload, via the harness.
set -euo pipefail
exec "${PYTHON:-.venv/bin/python}" -m mmnlab.harness demo "$1"
