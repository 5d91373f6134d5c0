# usage: bash eval_b_rl.sh POLICY_CKPT_OR_RUN OUT_NAME
cd /work/main && export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
.venv/bin/python recipes/evaluate.py "$1" --baseline /tmp/tools_runs/runs/sft_guess/version_0/hf_model \
  --prompts.data_path bench/tools_runs/data/guess_hard_heldout32.jsonl --prompts.max_samples 32 --prompts.max_prompt_length 1024 --greedy true \
  --tools.environment lit_align.tools.games:GuessTheNumber --tools.max_tool_calls 7 --tools.max_turns 8 \
  --sampling.max_new_tokens 256 --prompts.batch_size 16 --out_dir /tmp/tools_runs/eval/$2
