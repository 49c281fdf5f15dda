#!/usr/bin/env bash
# Fuzzes targets with libFuzzer through cargo-fuzz (docs/fuzzing.md):
#   fuzz/run.sh SECONDS [TARGET...]       (every target when none is named)
# New inputs go to fuzz/work/TARGET (ignored by git); the committed fuzz/corpus/TARGET is read
# as seeds. A crash, panic, timeout or OOM stops the run and leaves its input in
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

for t in "${targets[@]}"; do
  mkdir -p "work/$t"
  echo "== fuzz $t for ${secs}s"
  nice -n 19 cargo fuzz run --sanitizer none "$t" "work/$t" "corpus/$t" -- \
    -max_total_time="$secs" -max_len="$(max_len "$t")" -rss_limit_mb=4096 -timeout=20 \
    -print_final_stats=1
done
