#!/usr/bin/env bash
# The papers' claims measured on our own runs (issue 20, item 6; results in docs/claims.md).
#
# Each claim is a few tunes of the embedded default model on built-in data, each audited against the
# base on the full held-out sets (--full: every item, no early stop), then summarised by
# bench/claims_table.py. Steps whose output exists are skipped, so the script resumes where it was
# stopped. One heavy job at a time: on a 2-core CPU the whole script takes about two hours.
#
#   bench/claims.sh [safemix|preference|sparsity|flips|cpt ...]   (default: all, in that order)
#   CLAIMS_OUT=out/claims  (where the runs go)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
OUT=${CLAIMS_OUT:-out/claims}
mkdir -p "$OUT"
tl() { "$BIN/tunelens" "$@"; }
# the quickstart's tune (examples/quickstart.yaml): route telecom messages and answer them
QUICK=(--mix telecom-intent:0.75 --mix telecom-reply:0.25 --max-steps 32 --batch-size 8
       --optim sgd --lr 0.5 --lora-r 16 --save-steps 8 --seed 0)

tune() {  # tune NAME ARGS...: one tune into $OUT/NAME, skipped when its model exists
  local name=$1; shift
  [ -e "$OUT/$name/model" ] || tl tune --out "$OUT/$name" --no-progress "$@"
}
audit() {  # audit NAME SUITES [ARGS...]: the full audit of $OUT/NAME/model against the base
  local name=$1 suites=$2; shift 2
  [ -e "$OUT/$name/audit/ledger.json" ] || \
    tl audit --tuned "$OUT/$name/model" --suites "$suites" --full --seed 0 \
      --out "$OUT/$name/audit" "$@" || [ -e "$OUT/$name/audit/ledger.json" ]
}

safemix() {  # SafeInstruct: safety refusals blended into the demo tune at 0, 3% and 10%
  for m in 0 0.03 0.1; do
    tune "safemix-$m" "${QUICK[@]}" --safety-mix "$m"
    audit "safemix-$m" task,safety,over_refusal --task telecom-intent
  done
}

cpt() {  # SafeCOMM: continued pretraining on telecom text, no chat data at all
  tune cpt --objective cpt --data telecom-corpus --epochs 2 --batch-size 8 --lr 1e-3 --lora-r 16 \
    --max-length 256 --save-steps 8 --seed 0
  audit cpt safety,over_refusal,forgetting
}

sparsity() {  # RL finetunes small subnetworks: DPO vs SFT, full fine-tuning, same pairs and steps
  # bf16 is emulated on an AVX2-only CPU (matmuls ~9x slower), so bf16 runs take fewer steps; the fp32 runs
  # are repeated at that budget so each precision has its like-for-like pair
  local steps=${SPARSITY_STEPS:-4} short=${SPARSITY_BF16_STEPS:-4}
  local common=(--data preference-pairs --method full --batch-size 4 --max-length 192 --seed 0 --save-steps 1000)
  local runs=()
  for obj in sft dpo; do
    tune "sparsity-$obj-fp32-$short" "${common[@]}" --objective $obj --max-steps "$short" --dtype fp32
    tune "sparsity-$obj-bf16-$short" "${common[@]}" --objective $obj --max-steps "$short" --dtype bf16
    runs+=("sparsity-$obj-fp32-$short" "sparsity-$obj-bf16-$short")
  done
  if [ "$steps" -gt "$short" ]; then
    for obj in sft dpo; do
      tune "sparsity-$obj-fp32-$steps" "${common[@]}" --objective $obj --max-steps "$steps" --dtype fp32
      runs+=("sparsity-$obj-fp32-$steps")
    done
  fi
  for n in "${runs[@]}"; do
    [ -e "$OUT/$n/diff/diff.json" ] || tl diff --base default --tuned "$OUT/$n/model" --no-rank --out "$OUT/$n/diff"
  done
}

flips() {  # MUSCLE: flip-aware tuning (focal distillation toward the base) vs plain SFT
  local adam=(--data telecom-intent --max-steps 32 --batch-size 8 --lr 2e-4 --lora-r 16 --save-steps 16 --seed 0)
  tune flips-plain "${adam[@]}"
  audit flips-plain task,compatibility --task telecom-intent
  for w in ${FLIP_WEIGHTS:-1 4}; do
    tune "flips-compat-$w" "${adam[@]}" --compat-weight "$w"
    audit "flips-compat-$w" task,compatibility --task telecom-intent
  done
}

preference() {  # RewardBench-style: the preference suite before and after DPO on the safety pairs
  tune dpo-safety --objective dpo --data safety-preferences --max-steps 28 --batch-size 4 \
    --lora-r 16 --save-steps 14 --seed 0
  audit dpo-safety preference,safety,over_refusal
  # the control: the default model against itself (every delta and flip must be zero)
  [ -e "$OUT/self/audit/ledger.json" ] || \
    tl audit --tuned default --suites preference --full --seed 0 --out "$OUT/self/audit"
}

stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=(safemix preference sparsity flips cpt)
for s in "${stages[@]}"; do
  echo "== $s ($(date +%H:%M:%S))"
  "$s"
done
"$BIN/python" bench/claims_table.py "$OUT"
