#!/usr/bin/env bash
# Build mmntrace's wheel from this checkout and install it, non-editable, into
# a fresh venv the way the README tells a production user to:
#   scripts/wheel-venv.sh [DIST_DIR] [VENV_DIR]   (default build/dist build/wheel-venv)
# The venv sees the system's site-packages (Debian's bcc, python3-bpfcc, lives
# there and is not on PyPI); everything else comes from the wheel's
# dependencies, with the notebooks extra. The lab test tests/lab/test_install.py
# then records, reports, plots, samples and runs the notebooks from it.
# The wheel is built from a copy of the package's files only, so nothing stale
# under build/ (setuptools' own build/lib) can slip into it.
set -euo pipefail
cd "$(dirname "$0")/.."
dist=${1:-build/dist}
venv=${2:-build/wheel-venv}
log() { printf 'wheel: %s\n' "$*" >&2; }
src=$(mktemp -d /tmp/mmntrace-wheel-src.XXXXXX)
trap 'rm -rf "$src"' EXIT
git ls-files -co --exclude-standard -z -- pyproject.toml README.md mmntrace | xargs -0 cp --parents -t "$src"
rm -rf "$dist"; mkdir -p "$dist"
.venv/bin/python -m pip wheel -q --disable-pip-version-check --no-deps --no-build-isolation -w "$dist" "$src" \
    >/tmp/mmntrace-wheel.log 2>&1 || { tail -n 30 /tmp/mmntrace-wheel.log; log "building the wheel failed"; exit 1; }
whl=$(ls "$dist"/mmntrace-*.whl)
rm -rf "$venv"
/usr/bin/python3 -m venv --system-site-packages "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check "$whl[notebooks]" >/tmp/mmntrace-wheel.log 2>&1 \
    || { tail -n 30 /tmp/mmntrace-wheel.log; log "installing $whl failed (full log: /tmp/mmntrace-wheel.log)"; exit 1; }
"$venv/bin/python" -m ipykernel install --sys-prefix --name python3 >/dev/null 2>&1 || true
log "$whl installed in $venv ($("$venv/bin/mmntrace" --version))"
