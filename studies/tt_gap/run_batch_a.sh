#!/usr/bin/env bash
# TT-LoRA gap diagnosis, batch A (issue 30 item 5): settings that need no code change.
# The report's rule (cap 4,000 steps of 16 rows, max length 128, hold-out of the TRAIN split scored
# every 200 steps, patience 5, never before step 1,600, linear schedule), q,v, init zero, seed 0.
# Each run checkpoints every 100 steps and resumes (--resume) where a session stopped.
# usage: bash studies/tt_gap/run_batch_a.sh OUT_DIR   (one thread; ~10 CPU-min a run)
set -u
out=${1:-studies/tt_gap/runs}
mkdir -p "$out"
rule="--max-steps 4000 --batch-size 16 --max-length 128 --eval-every 200 --patience 5 --min-steps 1600 --eval-limit 1000 --seed 0 --schedule linear --checkpoint-every 100 --quiet --json"
run() {  # name task args...
  local name=$1 task=$2; shift 2
  [ -f "$out/$name.json" ] && return
  local t0=$(date +%s)
  OMP_NUM_THREADS=1 python -m ttmoe_core train-expert --task "$task" --out "$out/$name" $rule "$@" \
    --resume > "$out/$name.json.tmp" 2> "$out/$name.log" && mv "$out/$name.json.tmp" "$out/$name.json"
  echo "$name $(( $(date +%s) - t0 )) s: $(cat "$out/$name.json" 2>/dev/null | head -c 300)"
}
a16=$(python -c "print(round(16*(16/5)**2.5, 1))")   # α at which rank 16's initial ΔW scale equals rank 5's
for task in sst2 cola; do
  run "$task-r16" "$task" --rank 16 --lr 1e-3
  run "$task-r16-alpha$a16" "$task" --rank 16 --lr 1e-3 --alpha "$a16"
  run "$task-r5-4core" "$task" --rank 5 --lr 1e-3 --shape query=16,24,24,16 --shape value=16,24,24,16
  run "$task-r16-lr3e-4" "$task" --rank 16 --lr 3e-4
done
