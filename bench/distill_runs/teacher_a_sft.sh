#!/bin/bash
# Teacher A: reproduces bench/tools_runs/sft_b.sh with recipes/sft.py fit (HEAD), outputs under /tmp/distill_teachers
cd /tmp/distill_teachers
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
taskset -c 1 /work/main/.venv/bin/python /work/main/recipes/sft.py fit --data.data_path /tmp/distill_teachers/data/guess_sft.jsonl \
  --data.max_length 640 --data.batch_size 4 --trainer.accumulate_grad_batches 1 --trainer.max_steps 40 \
  --trainer.val_check_interval 1000 --trainer.limit_val_batches 0 --trainer.log_every_n_steps 2 \
  --trainer.logger.init_args.save_dir /tmp/distill_teachers/runs --trainer.logger.init_args.name teacher_a_guess_sft \
  --model.learning_rate 5e-5
