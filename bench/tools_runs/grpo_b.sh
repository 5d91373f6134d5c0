cd /work/main && export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
ALGO=${ALGO:-grpo}
.venv/bin/python recipes/$ALGO.py fit --config recipes/configs/examples/${ALGO}_guess_number.yaml \
  --model.policy /tmp/tools_runs/runs/sft_guess/version_0/hf_model \
  --data.data_path bench/tools_runs/data/guess_hard_train_prompts.jsonl --data.max_prompt_length 512 \
  --model.sampling.max_new_tokens 256 --model.tools.max_turns 8 --model.tools.max_tool_calls 7 \
  --model.learning_rate 5e-6 --trainer.max_steps ${STEPS:-20} --trainer.val_check_interval 10 --trainer.limit_val_batches 1 \
  --trainer.logger.init_args.save_dir /tmp/tools_runs/runs
