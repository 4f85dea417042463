#!/usr/bin/env bash
# make demo: record the KVM + test-module workload for a few seconds and print
# the text report; the recording is left in demo-out/rec. On a host that can
# trace (kprobes, root) it records here; otherwise it boots the 6.12 lab kernel.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=$PWD/demo-out
rm -rf "$OUT"; mkdir -p "$OUT"
INNER=(bash scripts/demo-inner.sh "$OUT")
if .venv/bin/mmntrace doctor >/dev/null 2>&1; then
    echo "demo: this kernel can be traced; recording here" >&2
    "${INNER[@]}"
else
    why=$(.venv/bin/mmntrace doctor 2>&1 >/dev/null | tail -n 1 || true)   # doctor exits non-zero here
    echo "demo: ${why#mmntrace: } -- recording in the lab (${DEMO_KERNEL:-6.12}) instead" >&2
    .venv/bin/mmntrace lab --kernel "${DEMO_KERNEL:-6.12}" --share "$OUT" -- "${INNER[@]}"
fi
# what was injected on purpose, before the report it explains
if [ -f "$OUT/injected.txt" ]; then fold -s -w 100 "$OUT/injected.txt" | sed 's/^/demo: /' >&2; fi
.venv/bin/mmntrace report "$OUT/rec"
