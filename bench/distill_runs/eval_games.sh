#!/bin/bash
# usage: eval_games.sh RUN_DIR OUT_NAME   (eval_a.sh's command, outputs under /tmp/distill_runs/eval; 2 threads)
cd /tmp/distill_runs; source env.sh
$PY /work/main/recipes/evaluate.py $1 --baseline smollm2-135m-instruct \
  --prompts.data_path /tmp/distill_teachers/data/guess_heldout32.jsonl --prompts.max_samples 32 --prompts.max_prompt_length 1024 --greedy true \
  --tools.environment lit_align.tools.games:GuessTheNumber --tools.max_tool_calls 6 --tools.max_turns 6 \
  --sampling.max_new_tokens 192 --prompts.batch_size 16 --out_dir /tmp/distill_runs/eval/$2
$PY /work/main/bench/tools_runs/summarize_eval.py /tmp/distill_runs/eval/$2 GuessTheNumber
