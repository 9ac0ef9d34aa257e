#!/bin/sh
# Installs what is missing, builds turnpike under ASan+UBSan and runs the whole
# test suite (unit + integration), then builds under TSan and runs the
# concurrency tests (labels rt and policy) again, then builds the libFuzzer
# targets with clang and runs each for a short smoke. Exit status is ctest's.
set -eu
cd "$(dirname "$0")/.."
./scripts/setup.sh
jobs=$(nproc)

./scripts/build.sh build/asan -DCMAKE_BUILD_TYPE=Debug -DTP_SANITIZE=address
(cd build/asan && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
    ctest -j"$jobs" --output-on-failure --timeout 600)

./scripts/build.sh build/tsan -DCMAKE_BUILD_TYPE=Debug -DTP_SANITIZE=thread
(cd build/tsan && TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
    ctest -j"$jobs" -L tsan --output-on-failure --timeout 600)
CC=clang ./scripts/build.sh build/fuzz -DCMAKE_BUILD_TYPE=Debug -DTP_SANITIZE=address -DTP_FUZZ=ON \
    -DTP_FUZZ_SECONDS=20
(cd build/fuzz && ctest -L fuzz --output-on-failure --timeout 300)
echo "test.sh: all tests passed"
