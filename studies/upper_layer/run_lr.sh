#!/usr/bin/env bash
# A second learning rate for an upper-layer expert (studies/upper_layer/run.sh's rule otherwise),
# written as <task>-lr<LR>; compare.py keeps, per task, the run with the best TRAIN hold-out score.
# usage: bash studies/upper_layer/run_lr.sh OUT_DIR TASK LR
set -u
out=$1 task=$2 lr=$3
name="$task-lr$lr"
rule="--targets query,key,value,dense --min-layer 2 --max-steps 4000 --batch-size 16 --max-length 128 --eval-every 200 --patience 5 --min-steps 1600 --eval-limit 2000 --seed 0 --schedule linear --checkpoint-every 100 --quiet --json"
[ -f "$out/$name.json" ] && exit 0
t0=$(date +%s)
OMP_NUM_THREADS=1 python -m ttmoe_core train-expert --task "$task" --name "$task" --out "$out/$name" \
  $rule --lr "$lr" --resume > "$out/$name.json.tmp" 2> "$out/$name.log" \
  && mv "$out/$name.json.tmp" "$out/$name.json"
echo "$name $(( $(date +%s) - t0 )) s: $(head -c 300 "$out/$name.json" 2>/dev/null)"
