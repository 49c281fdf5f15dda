#!/usr/bin/env bash
# Fuzzes targets with libFuzzer through cargo-fuzz (docs/fuzzing.md):
#   fuzz/run.sh SECONDS [TARGET...]       (every target when none is named)
# New inputs go to fuzz/work/TARGET (ignored by git); the committed fuzz/corpus/TARGET is read
# as seeds. libFuzzer's log goes to fuzz/work/TARGET.log; its final statistics are printed.
# A crash, panic, timeout or OOM stops the run, prints the log's tail and leaves the input in
# fuzz/artifacts/TARGET/. Runs at the lowest CPU priority: the machine is shared.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:?usage: fuzz/run.sh SECONDS [TARGET...]}
shift
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(gguf safetensors config chat_template request stream)

max_len() {
  case $1 in
    gguf) echo 131072 ;;
    safetensors) echo 65536 ;;
    *) echo 16384 ;;
  esac
}

nice -n 19 cargo fuzz build --sanitizer none
for t in "${targets[@]}"; do
  mkdir -p "work/$t"
  log="work/$t.log"
  echo "== fuzz $t for ${secs}s (log: fuzz/$log)"
  if ! nice -n 19 cargo fuzz run --sanitizer none "$t" "work/$t" "corpus/$t" -- \
    -max_total_time="$secs" -max_len="$(max_len "$t")" -rss_limit_mb=4096 -timeout=20 \
    -print_final_stats=1 >"$log" 2>&1; then
    grep -v '^#[0-9]' "$log" | tail -n 60 | cut -c1-400
    echo "fuzz: $t FAILED (input in fuzz/artifacts/$t/)"
    exit 1
  fi
  grep -E '^(Done|stat::(number_of_executed_units|average_exec_per_sec|new_units_added|peak_rss_mb))' "$log"
  echo "fuzz: $t corpus $(find "work/$t" -type f | wc -l) files"
done
