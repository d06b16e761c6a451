#!/usr/bin/env bash
# TT-LoRA gap diagnosis, batch C: the head (H2 in AUTHORS_CODE.md). We train a head at the
# adapter's rate; the authors' code trains none (a random head, frozen). (b) cores at the paper's
# 5e-3, the head at LoRA's 5e-4; (c) the authors' frozen random head (head lr 0), cores at 5e-3
# and at our 1e-3. H2 holds if (b) moves CoLA off the majority class at 5e-3 and r16 > r5 on SST-2.
# usage: bash studies/tt_gap/run_batch_c.sh OUT_DIR      (train-expert --head-lr)
set -u
out=${1:-studies/tt_gap/runs}
mkdir -p "$out"
. "$(dirname "$0")/run_one.sh"
for task in sst2 cola; do
  run "$task-r5-lr5e-3-head5e-4" "$task" --rank 5 --lr 5e-3 --head-lr 5e-4
  run "$task-r5-lr5e-3-head0" "$task" --rank 5 --lr 5e-3 --head-lr 0
  run "$task-r5-head0" "$task" --rank 5 --lr 1e-3 --head-lr 0
done
run sst2-r16-lr5e-3-head5e-4 sst2 --rank 16 --lr 5e-3 --head-lr 5e-4
