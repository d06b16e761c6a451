#!/usr/bin/env bash
# TT-LoRA gap diagnosis, batch B (after batch A found 4 cores beat 6 on SST-2 at r5):
# does rank buy something once the chain is shorter, and is a 2-core chain (LoRA's structure,
# TT init and α) level with LoRA? Same rule as batch A. usage: bash run_batch_b.sh OUT_DIR
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
  echo "$name $(( $(date +%s) - t0 )) s: $(head -c 300 "$out/$name.json" 2>/dev/null)"
}
four="--shape query=16,24,24,16 --shape value=16,24,24,16"
two="--shape query=384,384 --shape value=384,384"
run sst2-r16-4core sst2 --rank 16 --lr 1e-3 $four
run sst2-r5-2core sst2 --rank 5 --lr 1e-3 $two
run cola-r5-2core cola --rank 5 --lr 1e-3 $two
