cd /work/main && export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
.venv/bin/python recipes/evaluate.py /tmp/tools_runs/runs/sft_calc/version_0 --baseline smollm2-135m-instruct \
  --prompts.data_path bench/tools_runs/data/gsm8k_heldout64.jsonl --prompts.max_samples 64 --prompts.max_prompt_length 1024 \
  --rewards.reward_funcs '[lit_align.rewards.verifiers:arithmetic_answer_reward]' --greedy true \
  --tools.functions '[lit_align.tools.calculator:calculator]' --tools.max_tool_calls 4 --tools.max_turns 6 \
  --sampling.max_new_tokens 160 --prompts.batch_size 16 --out_dir /tmp/tools_runs/eval/a_sft_vs_base
