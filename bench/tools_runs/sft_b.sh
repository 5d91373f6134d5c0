cd /work/main && export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
.venv/bin/python bench/tools_runs/tool_sft.py fit --data.data_path /tmp/tools_runs/data/guess_sft.jsonl \
  --data.max_length 640 --data.batch_size 4 --trainer.accumulate_grad_batches 1 --trainer.max_steps 40 \
  --trainer.val_check_interval 1000 --trainer.limit_val_batches 0 --trainer.log_every_n_steps 2 \
  --trainer.logger.init_args.save_dir /tmp/tools_runs/runs --trainer.logger.init_args.name sft_guess \
  --model.learning_rate 5e-5
