#!/bin/bash
# usage: eval_arith.sh RUN_DIR OUT_NAME   (eval_b2.sh's command, outputs under /tmp/distill_runs/eval; 2 threads)
cd /tmp/distill_runs; source env.sh
$PY /work/main/recipes/evaluate.py $1 --baseline smollm2-135m-instruct \
  --prompts /tmp/distill_teachers/data/arith_heldout64.jsonl --greedy true \
  --rewards.reward_funcs '[lit_align.rewards.verifiers:arithmetic_answer_reward]' \
  --sampling.max_new_tokens 64 --out_dir /tmp/distill_runs/eval/$2 "${@:3}"
