#!/bin/sh
# scripts/fuzz_long.sh TARGET SECONDS: one long libFuzzer run of tests/fuzz/fuzz_TARGET.c.
#
# TARGET is the target's name with or without the fuzz_ prefix (config,
# request, response, router, jwt, jwks, apikeys, h2). Builds build/fuzz with clang
# (ASan+UBSan, libFuzzer) when it is missing, then runs one fuzzing process
# (no -jobs/-workers: one core) for SECONDS on a work corpus
# build/fuzz-long/TARGET/corpus seeded from tests/fuzz/corpus/TARGET; new
# inputs go to the work corpus only (merge the interesting ones into the
# committed seeds by hand: `fuzz_X -merge=1 tests/fuzz/corpus/fuzz_X build/fuzz-long/fuzz_X/corpus`).
# Crashing, leaking or timing-out inputs are written to
# build/fuzz-long/TARGET/artifacts/ and each is run again alone: one that does
# not crash the target then (a libfyaml crash met by the guard's child process,
# see src/core/yaml_guard.c) is moved to artifacts/guarded/ and is no finding;
# a timeout that does not recur goes to artifacts/unreproduced/ (the run was
# stalled: never SIGSTOP a fuzzer, its per-input timer counts wall time).
# Runs started together take turns building build/fuzz (flock).
# The whole libFuzzer output is in build/fuzz-long/TARGET/fuzz.log.
#
# At the end it prints the executions, the coverage (edges and features), the
# corpus size and any artifacts; the exit status is 0 when nothing was found,
# 1 when an artifact was written (or libFuzzer failed), 2 on usage errors.
# The documented long run is one hour per target (docs/internals.md, "Fuzzing"):
#     nice -n 19 ./scripts/fuzz_long.sh request 3600
set -eu
if [ $# -ne 2 ]; then
    echo "usage: $0 TARGET SECONDS   (TARGET: config request response router jwt jwks apikeys h2)" >&2
    exit 2
fi
cd "$(dirname "$0")/.."
t=${1#fuzz_}
t=fuzz_$t
secs=$2
if [ ! -f "tests/fuzz/$t.c" ]; then
    echo "$0: no target tests/fuzz/$t.c" >&2
    exit 2
fi
case $secs in
'' | *[!0-9]*)
    echo "$0: SECONDS must be a whole number" >&2
    exit 2
    ;;
esac

build=build/fuzz
# two runs started together must not build build/fuzz at the same time
mkdir -p build
exec 9>build/.fuzz-build.lock
flock 9
if [ ! -f "$build/CMakeCache.txt" ]; then
    CC=clang cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Debug -DTP_SANITIZE=address -DTP_FUZZ=ON >/dev/null
else
    cmake "$build" >/dev/null # re-globs tests/fuzz, so a target added since is known
fi
cmake --build "$build" -j"$(nproc)" --target "$t" >/dev/null
flock -u 9
exec 9>&-

work=build/fuzz-long/$t
mkdir -p "$work/corpus" "$work/artifacts"
log=$work/fuzz.log
touch "$work/.start"

echo "fuzz_long: $t for ${secs}s (log $log)"
rc=0
# -timeout / -rss_limit_mb as in the ctest smoke; -print_final_stats for the execution count
ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1} UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1} \
    "$build/$t" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$work/artifacts/" "$work/corpus" "tests/fuzz/corpus/$t" >"$log" 2>&1 || rc=$?

execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
last=$(grep -E '^#[0-9]+' "$log" | tail -n 1 || true)
cov=$(echo "$last" | sed -n 's/.*cov: \([0-9]*\).*/\1/p')
ft=$(echo "$last" | sed -n 's/.*ft: \([0-9]*\).*/\1/p')
corp=$(echo "$last" | sed -n 's/.*corp: \([0-9]*\/[0-9a-zA-Z]*\).*/\1/p')
rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
# An artifact counts when it crashes the target again on its own. The libfyaml guard
# (src/core/yaml_guard.c) parses config and API-key files in a forked child; a child
# that meets a libfyaml crash runs libFuzzer's crash handler too and leaves an
# artifact, although the target itself refused the file cleanly: those go to
# artifacts/guarded/.
# A timeout or slow unit that does not recur alone says the machine stalled the
# run (overload, or a stopped process: libFuzzer's per-input timer runs on the
# wall clock, so never SIGSTOP a fuzzer); those go to artifacts/unreproduced/.
found=0
guarded=0
unrepro=0
mkdir -p "$work/artifacts/guarded" "$work/artifacts/unreproduced"
for f in $(find "$work/artifacts" -maxdepth 1 -type f -newer "$work/.start"); do
    if "$build/$t" -runs=1 -timeout=10 -rss_limit_mb=2048 -artifact_prefix="$work/rerun-" "$f" >/dev/null 2>&1; then
        case ${f##*/} in
        timeout-* | slow-unit-*)
            mv "$f" "$work/artifacts/unreproduced/"
            unrepro=$((unrepro + 1))
            ;;
        *)
            mv "$f" "$work/artifacts/guarded/"
            guarded=$((guarded + 1))
            ;;
        esac
    else
        found=$((found + 1))
    fi
done
rm -f "$work"/rerun-* # what the guard's child left while an artifact ran again
echo "fuzz_long: $t executions ${execs:-?} (${rate:-?}/s), coverage ${cov:-?} edges, ${ft:-?} features," \
    "corpus ${corp:-?}, exit $rc"
if [ "$guarded" -gt 0 ]; then
    echo "fuzz_long: $t $guarded input(s) crashed libfyaml inside the guard's child only (refused cleanly):" \
        "$work/artifacts/guarded"
fi
if [ "$unrepro" -gt 0 ]; then
    echo "fuzz_long: $t $unrepro input(s) timed out during the run but not alone (a stalled machine?):" \
        "$work/artifacts/unreproduced"
fi
if [ "$found" -gt 0 ] || [ "$rc" -ne 0 ]; then
    echo "fuzz_long: $t FOUND something; artifacts in $work/artifacts:"
    ls -l "$work/artifacts"
    grep -E 'ERROR: |SUMMARY: |runtime error:|==[0-9]+==' "$log" | head -n 20 || true
    exit 1
fi
echo "fuzz_long: $t nothing found"
