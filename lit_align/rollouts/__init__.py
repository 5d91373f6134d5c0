"""Rollouts: completions sampled from the policy, and what records them.

    sampling.py  GenerationOptions / SamplingOptions (the ``sampling`` group) and the Sampler part: a backend built on
                 first use, every call seeded by (seed, key); the backend protocol and seeded_rng
    hf.py        HFGenerate, the Hugging Face ``generate`` backend (KV cache, one prefill per prompt for its samples)
    vllm.py      VLLMGenerate, a colocated vLLM engine (the optional ``vllm`` extra, CUDA only)
    record.py    Rollout (completions, masks, log-probs, conversations) and Experience (a rollout as an online step
                 trains on it); rollouts made outside (rollout_from_batch); the policy's update count
"""
