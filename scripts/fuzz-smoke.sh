#!/usr/bin/env bash
# Builds every cargo-fuzz target in fuzz/ and runs each for FUZZ_SECS seconds (60) from a
# scratch copy of its committed corpus, so nothing the fuzzer finds is added to the repository.
# Fails if any target crashes (a panic, an ASan report, a leak), hangs past 30 s on one input
# or grows past 4 GiB; the input that did it is left in fuzz/artifacts/<target>/ and printed.
#
#   scripts/fuzz-smoke.sh                          # every target, 60 s each
#   FUZZ_SECS=600 scripts/fuzz-smoke.sh image ops  # longer, chosen targets
#
# On a 2-core machine the build takes about 7 minutes from scratch and the runs 5, one a
# target. Needs only the stable toolchain and cargo-fuzz (`cargo install cargo-fuzz --locked`).
# cargo-fuzz passes nightly-only flags to rustc (-Zsanitizer=address and the coverage passes);
# RUSTC_BOOTSTRAP=1 lets stable accept them. AddressSanitizer works on stable: its runtime
# ships with the standard library for x86_64-unknown-linux-gnu.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
export RUSTC_BOOTSTRAP=1
export CARGO_TERM_COLOR=never
# Leaks of detached threads still exiting when libFuzzer exits (lsan.supp says which).
export LSAN_OPTIONS="suppressions=$PWD/lsan.supp:print_suppressions=0${LSAN_OPTIONS:+:$LSAN_OPTIONS}"

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "cargo-fuzz is not installed: cargo install cargo-fuzz --locked --version 0.13.2" >&2
  exit 1
fi

secs=${FUZZ_SECS:-60}
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo fuzz list)
fi

start=$(date +%s)
# Release with debug assertions and overflow checks, and ASan: cargo-fuzz's defaults. The
# build of all targets at once shares the dependencies' instrumented builds.
cargo fuzz build
echo "fuzz-smoke: built the targets in $(($(date +%s) - start)) s"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
failed=()
for t in "${targets[@]}"; do
  mkdir -p "$scratch/$t"
  cp corpus/"$t"/* "$scratch/$t/"
  log="$scratch/$t.log"
  touch "$scratch/$t.start"
  t0=$(date +%s)
  if cargo fuzz run "$t" "$scratch/$t" -- \
    -max_total_time="$secs" -timeout=30 -rss_limit_mb=4096 -print_final_stats=1 >"$log" 2>&1; then
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    echo "fuzz-smoke: $t: ${runs:-?} runs in $(($(date +%s) - t0)) s, no crash"
  else
    failed+=("$t")
    echo "fuzz-smoke: $t FAILED; the end of its log:"
    tail -n 60 "$log"
    find artifacts/"$t" -type f -newer "$scratch/$t.start" 2>/dev/null | while read -r a; do
      echo "fuzz-smoke: $a (reproduce: RUSTC_BOOTSTRAP=1 cargo fuzz run $t $a), base64:"
      base64 -w 0 "$a"
      echo
    done
  fi
done

echo "fuzz-smoke: ${#targets[@]} targets in $(($(date +%s) - start)) s"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz-smoke: crashed: ${failed[*]}" >&2
  exit 1
fi
