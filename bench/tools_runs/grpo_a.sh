cd /work/main && export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
.venv/bin/python recipes/grpo.py fit --config recipes/configs/examples/grpo_calculator_tool.yaml \
  --model.policy /tmp/tools_runs/runs/sft_calc/version_0/hf_model \
  --data.data_path /tmp/tools_runs/data/gsm8k_rows0_6999.jsonl \
  --data.columns '{"prompt": "question", "answer": "final_answer"}' \
  --data.user_template "{prompt} Use the calculator for the arithmetic. End with: The answer is <number>." \
  --data.max_prompt_length 512 --model.sampling.max_new_tokens 224 --model.tools.max_turns 6 --model.tools.max_tool_calls 4 \
  --model.learning_rate 5e-6 --trainer.max_steps ${STEPS:-8} --trainer.val_check_interval 8 --trainer.limit_val_batches 1 \
  --trainer.logger.init_args.save_dir /tmp/tools_runs/runs
