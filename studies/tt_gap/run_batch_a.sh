#!/usr/bin/env bash
# TT-LoRA gap diagnosis, batch A (issue 30 item 5): settings that need no code change.
# usage: bash studies/tt_gap/run_batch_a.sh OUT_DIR   (one thread; ~10 CPU-min a run)
set -u
out=${1:-studies/tt_gap/runs}
mkdir -p "$out"
. "$(dirname "$0")/run_one.sh"
a16=$(python -c "print(round(16*(16/5)**2.5, 1))")   # α at which rank 16's initial ΔW scale equals rank 5's
for task in sst2 cola; do
  run "$task-r16" "$task" --rank 16 --lr 1e-3
  run "$task-r16-alpha$a16" "$task" --rank 16 --lr 1e-3 --alpha "$a16"
  run "$task-r5-4core" "$task" --rank 5 --lr 1e-3 --shape query=16,24,24,16 --shape value=16,24,24,16
  run "$task-r16-lr3e-4" "$task" --rank 16 --lr 3e-4
done
