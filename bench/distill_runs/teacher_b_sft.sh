#!/bin/bash
# Teacher B v2: arithmetic SFT, rows 0-899, completion = one-line worked computation ending in the answer
cd /tmp/distill_teachers
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
taskset -c 1 /work/main/.venv/bin/python /work/main/recipes/sft.py fit --data.data_path /tmp/distill_teachers/data/arith_sft900_worked.jsonl \
  --data.max_length 128 --data.batch_size 4 --trainer.accumulate_grad_batches 1 --trainer.max_steps 60 \
  --trainer.val_check_interval 30 --trainer.limit_val_batches 5 --trainer.log_every_n_steps 5 \
  --trainer.logger.init_args.save_dir /tmp/distill_teachers/runs --trainer.logger.init_args.name teacher_b2_arith_worked_sft \
  --model.learning_rate 5e-5
