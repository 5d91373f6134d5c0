#!/bin/bash
# usage: grpo_guess.sh NAME MAX_STEPS MAX_TIME VAL_INTERVAL
cd /tmp/distill_runs; source env.sh
$PY /work/main/recipes/grpo.py fit --config /work/main/recipes/configs/examples/grpo_guess_number.yaml \
  --model.policy smollm2-135m-instruct --model.num_generations 4 --model.sampling.max_new_tokens 192 \
  --model.learning_rate 5e-6 \
  --data.data_path /tmp/distill_teachers/data/guess_train_prompts.jsonl --data.batch_size 4 --data.eval_batch_size 8 --data.max_prompt_length 1024 --data.val_size 8 \
  --trainer.max_time $3 --trainer.max_steps $2 --trainer.val_check_interval $4 --trainer.limit_val_batches 2 \
  --trainer.logger.init_args.save_dir /tmp/distill_runs/runs --trainer.logger.init_args.name $1
