#!/bin/bash
# usage: distill_guess.sh NAME MAX_STEPS MAX_TIME VAL_INTERVAL
cd /tmp/distill_runs; source env.sh
$PY /work/main/recipes/distill.py fit \
  --model.teacher /tmp/distill_teachers/runs/teacher_a_guess_sft/version_0 --model.teacher_system_prompt null \
  --model.rewards.reward_funcs '[]' \
  --model.tools.environment lit_align.tools.games:GuessTheNumber \
  --model.tools.max_turns 6 --model.tools.max_tool_calls 6 --model.sampling.max_new_tokens 192 \
  --model.beta 1.0 --model.learning_rate 5e-5 \
  --data.data_path /tmp/distill_teachers/data/guess_train_prompts.jsonl --data.batch_size 4 --data.max_prompt_length 1024 --data.val_size 8 \
  --trainer.max_time $3 --trainer.max_steps $2 --trainer.val_check_interval $4 --trainer.limit_val_batches 2 \
  --trainer.logger.init_args.save_dir /tmp/distill_runs/runs --trainer.logger.init_args.name $1
