#!/usr/bin/env bash
# Run the fuzz targets, installing cargo-fuzz if missing.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]        each target for SECONDS (default 60)
#   scripts/fuzz.sh --runs N [TARGET...]         each target for N executions (e.g. 10000000)
#
# No TARGET: every target. FUZZ_SANITIZER=none builds without AddressSanitizer (several times
# faster; the targets check panics and assertions, which safe Rust reports either way).
#
# cargo-fuzz needs nightly compiler flags (sanitizers, coverage instrumentation);
# RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them, so no nightly install is needed.
# Each target starts from its hand-written seeds in fuzz/corpus/TARGET and writes what it
# discovers to fuzz/work/TARGET (ignored by git), so the committed seeds stay small.
# Every target runs even if an earlier one crashed; the script then exits non-zero and the
# reproducer is in fuzz/artifacts/TARGET (replay: cargo fuzz run TARGET FILE).
set -euo pipefail
cd "$(dirname "$0")/.."

limit=(-max_total_time="${1:-60}")
what="${1:-60}s"
if [ "${1:-}" = "--runs" ]; then
  limit=(-runs="$2")
  what="$2 executions"
  shift 2
elif [ $# -gt 0 ]; then
  shift
fi
sanitizer=(-s "${FUZZ_SANITIZER:-address}")
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz (crates.io)"
  cargo install --locked cargo-fuzz
fi

cd fuzz
if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list)
fi
cargo fuzz build "${sanitizer[@]}"
failed=()
for target in "${targets[@]}"; do
  mkdir -p "work/$target"
  echo "== $target: $what ($(date -u +%H:%M:%S))"
  cargo fuzz run "${sanitizer[@]}" "$target" "work/$target" "corpus/$target" -- \
    "${limit[@]}" -print_final_stats=1 || failed+=("$target")
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "crashed: ${failed[*]}" >&2
  exit 1
fi
echo "all targets ran $what clean"
