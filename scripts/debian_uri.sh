#!/usr/bin/env bash
# Prints the URI of this machine's Debian bookworm apt source (deb822 or
# one-line format), so that the repository never names a mirror itself.
set -euo pipefail
uri=""
if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    uri=$(awk '/^URIs:/{u=$2} /^Suites:/{for(i=2;i<=NF;i++) if($i=="bookworm"){print u; exit}}' \
          /etc/apt/sources.list.d/debian.sources)
fi
if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
    uri=$(awk '$1=="deb" && $0 ~ / bookworm / {for(i=2;i<=NF;i++) if($i ~ /^[a-z]+:\/\//){print $i; exit}}' \
          /etc/apt/sources.list)
fi
[ -n "$uri" ] || { echo "cannot find the machine's Debian bookworm apt source" >&2; exit 1; }
printf '%s\n' "$uri"
