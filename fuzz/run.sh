#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time and prints corpus size and executions.
#   fuzz/run.sh [SECONDS_PER_TARGET]   (default 30)
# Needs cargo-fuzz and a nightly toolchain; without nightly, stable with RUSTC_BOOTSTRAP=1
# (the same properties also run as proptest in `cargo test`).
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-30}"
# Instrumented builds share nothing with the main target dir (other RUSTFLAGS); a target dir that
# outlives the checkout lets a second run on the same machine rebuild only sandgate itself.
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-${TMPDIR:-/var/tmp}/sandgate-fuzz-target}"
if rustup run nightly rustc --version >/dev/null 2>&1; then
  toolchain=(+nightly)
else
  toolchain=()
  export RUSTC_BOOTSTRAP=1
fi
targets=$(cargo "${toolchain[@]}" fuzz list)
cargo "${toolchain[@]}" fuzz build -O
status=0
for target in $targets; do
  mkdir -p "corpus/$target"
  log=$(mktemp)
  if ! cargo "${toolchain[@]}" fuzz run -O "$target" -- -max_total_time="$seconds" -rss_limit_mb=2048 \
      -print_final_stats=1 >"$log" 2>&1; then
    echo "fuzz $target: FAILED (the input is under fuzz/artifacts/$target/)"
    grep -m1 -A20 -E "panicked|ERROR: libFuzzer" "$log" || tail -40 "$log"
    status=1
  fi
  execs=$(grep -m1 'stat::number_of_executed_units' "$log" | awk '{print $2}')
  echo "fuzz $target: ${execs:-?} executions in ${seconds}s, corpus $(ls "corpus/$target" | wc -l) inputs"
  rm -f "$log"
done
exit $status
