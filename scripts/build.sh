#!/bin/sh
# scripts/build.sh DIR [cmake options...]: configures (once) and builds turnpike in DIR.
set -eu
dir=$1; shift
cd "$(dirname "$0")/.."
if [ ! -f "$dir/CMakeCache.txt" ]; then
    cmake -S . -B "$dir" "$@" >/dev/null
fi
cmake --build "$dir" -j"$(nproc)"
