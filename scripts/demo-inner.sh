#!/usr/bin/env bash
# Runs where tracing works (host or lab guest): recorder, then the workload.
set -euo pipefail
OUT=$1
PY=${PYTHON:-.venv/bin/python}
$PY -m mmntrace.cli record -q -o "$OUT/rec" --ready-file "$OUT/ready.json" &
rec=$!
for _ in $(seq 600); do [ -s "$OUT/ready.json" ] && break; sleep 0.5; done
[ -s "$OUT/ready.json" ] || { echo "demo: recorder did not start" >&2; kill $rec; exit 1; }
kvm=(); [ -e /dev/kvm ] && kvm=(--kvm)
$PY -m mmntrace.workload "${kvm[@]}" --out "$OUT/workload" --repeat 3 munmap dontneed mprotect soft_dirty cow thp_split >/dev/null
kill -INT $rec
wait $rec
