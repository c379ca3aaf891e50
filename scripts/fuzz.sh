#!/usr/bin/env bash
# Run every fuzz target for SECONDS each (default 60), installing cargo-fuzz if missing.
#
# cargo-fuzz needs nightly compiler flags (sanitizers, coverage instrumentation);
# RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them, so no nightly install is needed.
# Each target starts from its hand-written seeds in fuzz/corpus/TARGET and writes what it
# discovers to fuzz/work/TARGET (ignored by git), so the committed seeds stay small.
# Every target runs even if an earlier one crashed; the script then exits non-zero and the
# reproducer is in fuzz/artifacts/TARGET (replay: cargo fuzz run TARGET FILE).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-60}
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz (crates.io)"
  cargo install --locked cargo-fuzz
fi

cd fuzz
mapfile -t targets < <(cargo fuzz list)
cargo fuzz build
failed=()
for target in "${targets[@]}"; do
  mkdir -p "work/$target"
  echo "== $target: ${seconds}s"
  cargo fuzz run "$target" "work/$target" "corpus/$target" -- \
    -max_total_time="$seconds" -print_final_stats=1 || failed+=("$target")
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "crashed: ${failed[*]}" >&2
  exit 1
fi
echo "all targets ran ${seconds}s clean"
