#!/usr/bin/env bash
# TT-LoRA gap diagnosis, batch B (after batch A found 4 cores beat 6 on SST-2 at r5): does rank
# buy something once the chain is shorter, and is a 2-core chain (LoRA's structure, TT init and
# α) level with LoRA? usage: bash studies/tt_gap/run_batch_b.sh OUT_DIR
set -u
out=${1:-studies/tt_gap/runs}
mkdir -p "$out"
. "$(dirname "$0")/run_one.sh"
four="--shape query=16,24,24,16 --shape value=16,24,24,16"
two="--shape query=384,384 --shape value=384,384"
run sst2-r16-4core sst2 --rank 16 --lr 1e-3 $four
run sst2-r5-2core sst2 --rank 5 --lr 1e-3 $two
run cola-r5-2core cola --rank 5 --lr 1e-3 $two
