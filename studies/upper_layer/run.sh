#!/usr/bin/env bash
# Upper-layer experts for the shipped pack (issue 32's lever): each demo task retrained with the
# pack's own recipe (assets/demo/pack.json "build": q,k,v,dense, cap 4,000 steps of 16 rows,
# hold-out every 200 steps, patience 5, never before step 1,600, its task's learning rate,
# seed 0) but --min-layer 2: layers 0-1 keep ΔW = 0, so the layer-2 router's frozen prefix is the
# experts' too and runs once. Cheapest tasks first; each run checkpoints every 100 steps and
# resumes where a session stopped.
# usage: bash studies/upper_layer/run.sh [OUT_DIR [TASK=LR ...]]      (one thread a run; two
# instances with different task lists run side by side: a folder being trained is locked)
set -u
out=${1:-studies/upper_layer/runs}
shift || true
mkdir -p "$out"
rule="--targets query,key,value,dense --min-layer 2 --max-steps 4000 --batch-size 16 --max-length 128 --eval-every 200 --patience 5 --min-steps 1600 --eval-limit 2000 --seed 0 --schedule linear --checkpoint-every 100 --quiet --json"
pairs=${*:-cola=3e-3 sst2=3e-3 qnli=3e-4 rte=3e-4 qqp=1e-3 mnli=1e-3}
for pair in $pairs; do
  task=${pair%%=*} lr=${pair#*=}
  [ -f "$out/$task.json" ] && continue
  t0=$(date +%s)
  OMP_NUM_THREADS=1 python -m ttmoe_core train-expert --task "$task" --out "$out/$task" $rule \
    --lr "$lr" --resume > "$out/$task.json.tmp" 2> "$out/$task.log" \
    && mv "$out/$task.json.tmp" "$out/$task.json"
  echo "$task $(( $(date +%s) - t0 )) s: $(head -c 300 "$out/$task.json" 2>/dev/null)"
done
