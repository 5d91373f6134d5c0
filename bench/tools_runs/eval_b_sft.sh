cd /work/main && export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
.venv/bin/python recipes/evaluate.py /tmp/tools_runs/runs/sft_guess/version_0 --baseline smollm2-135m-instruct \
  --prompts.data_path bench/tools_runs/data/guess_heldout32.jsonl --prompts.max_samples 32 --prompts.max_prompt_length 1024 --greedy true \
  --tools.environment lit_align.tools.games:GuessTheNumber --tools.max_tool_calls 6 --tools.max_turns 6 \
  --sampling.max_new_tokens 192 --prompts.batch_size 16 --out_dir /tmp/tools_runs/eval/b_sft_vs_base
