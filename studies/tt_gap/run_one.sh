# The diagnosis runs' one rule and runner, sourced by run_batch_*.sh: the report's stopping rule
# (cap 4,000 steps of 16 rows, max length 128, hold-out of the TRAIN split every 200 steps,
# patience 5, never before step 1,600, linear schedule), q,v, init zero, seed 0; each run
# checkpoints every 100 steps and resumes (--resume) where a session stopped.
rule="--max-steps 4000 --batch-size 16 --max-length 128 --eval-every 200 --patience 5 --min-steps 1600 --eval-limit 1000 --seed 0 --schedule linear --checkpoint-every 100 --quiet --json"
run() {  # name task args...
  local name=$1 task=$2; shift 2
  [ -f "$out/$name.json" ] && return
  local t0=$(date +%s)
  OMP_NUM_THREADS=1 python -m ttmoe_core train-expert --task "$task" --out "$out/$name" $rule "$@" \
    --resume > "$out/$name.json.tmp" 2> "$out/$name.log" && mv "$out/$name.json.tmp" "$out/$name.json"
  echo "$name $(( $(date +%s) - t0 )) s: $(head -c 300 "$out/$name.json" 2>/dev/null)"
}
