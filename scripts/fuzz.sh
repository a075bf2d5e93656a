#!/usr/bin/env bash
# The libFuzzer harnesses of fuzz/ (safetensors files, images, LLaVA data files, config JSON), each built with
# AddressSanitizer + UndefinedBehaviorSanitizer and run for SECONDS (default 30) from its seed corpus in
# fuzz/corpus/<name>/. The corpus a run grows is kept in build-fuzz/corpus/<name>/ and the next run starts from it;
# a crash, a sanitizer report, a leak-free timeout (10 s) or an input over 2 GB of memory is a finding, written to
# build-fuzz/findings/ and reported with a non-zero exit. Needs clang (Debian: apt-get install clang-14); without
# it the script says so and exits 0, so CI runs it only where clang is installed.
#   bash scripts/fuzz.sh [SECONDS] [HARNESS...]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-30}
shift || true
harnesses=("$@")
[ ${#harnesses[@]} -gt 0 ] || harnesses=(safetensors image llava config)
cxx=""
for c in clang++-14 clang++; do command -v "$c" >/dev/null && { cxx=$c; break; }; done
if [ -z "$cxx" ]; then
  echo "fuzz: no clang++ on this machine; the harnesses need clang's libFuzzer (apt-get install clang-14)"
  exit 0
fi
[ -x .venv/bin/python ] || { echo "fuzz: no .venv (run scripts/setup.sh first)"; exit 1; }
mkdir -p build-fuzz
if [ ! -f build-fuzz/build.ninja ]; then
  cmake -S fuzz -B build-fuzz -G Ninja -DCMAKE_CXX_COMPILER="$cxx" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    >build-fuzz/cmake.log 2>&1 || { cat build-fuzz/cmake.log; exit 1; }
fi
ninja -C build-fuzz >build-fuzz/ninja.log 2>&1 || { tail -40 build-fuzz/ninja.log; exit 1; }
mkdir -p build-fuzz/findings
status=0
printf '%-12s %8s %12s %8s %10s  %s\n' harness seconds executions exec/s corpus finding
for h in "${harnesses[@]}"; do
  corpus=build-fuzz/corpus/$h
  mkdir -p "$corpus"
  cp -n fuzz/corpus/"$h"/* "$corpus"/ 2>/dev/null || true
  log=build-fuzz/fuzz_$h.log
  set +e
  ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=print_stacktrace=1 \
    build-fuzz/fuzz_"$h" "$corpus" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    -artifact_prefix=build-fuzz/findings/"$h"- >"$log" 2>&1
  rc=$?
  set -e
  done_line=$(grep -E '^#[0-9]+.*DONE' "$log" | tail -1 || true)
  runs=$(grep -oE '^Done [0-9]+ runs' "$log" | grep -oE '[0-9]+' || echo 0)
  rate=$(echo "$done_line" | grep -oE 'exec/s: [0-9]+' | grep -oE '[0-9]+' || echo 0)
  files=$(find "$corpus" -type f | wc -l)
  finding="none"
  if [ $rc -ne 0 ]; then finding="rc $rc, see $log and build-fuzz/findings/"; status=1; fi
  printf '%-12s %8s %12s %8s %10s  %s\n' "$h" "$seconds" "${runs:-0}" "${rate:-0}" "$files" "$finding"
done
exit $status
