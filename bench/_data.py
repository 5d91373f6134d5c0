"""The rows bench/compare.py gives both sides: same rows, same order, nothing dropped or cut differently.

For each algorithm the rows are read from a real dataset in ``../shared/data`` (or the project's demo files with
``--data demo``), put into the format both libraries read (plain-text or chat prompt/chosen/rejected, prompt/
completion/label, chat prompt/completion, chat prompt + answer), filtered to rows both sides keep (see ``fits``:
TRL 1.16 silently drops a row whose prompt fills ``max_length``, lit-align raises; KTO rows must fit whole), and
cut to exactly ``steps x batch`` rows: one epoch is the timed run.

lit-align's DataModules shuffle by (seed, epoch); TRL is run with sequential sampling on the rows in the order
lit-align's own sampler draws them (read from the DataModule, not re-implemented), so step k of both sides is the
same batch. compare.py then checks it on the batches both sides actually build (token counts and digests).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
SAMPLES = REPO / "datamodules" / "samples"

# algorithm -> (real data under ../shared/data, demo file under datamodules/samples)
SOURCES = {
    "dpo": ("hh_rlhf_harmless_base_test/harmless_base_test_prompt_chosen_rejected.jsonl", "preference_demo.jsonl"),
    "kto": ("hh_rlhf_harmless_base_test/harmless_base_test_kto_unpaired.jsonl", "binary_demo.jsonl"),
    "sft": ("dolly_sample/dolly_sample.jsonl", "sft_demo.jsonl"),
    "grpo": ("gsm8k/train_normalized.jsonl", "arithmetic_prompts.jsonl"),  # GSM8K questions as user turns
}


def family(algo: str) -> str:
    return "dpo" if algo == "dpo_cached" else algo


def source_file(algo: str, data: str) -> Path:
    real, demo = SOURCES[family(algo)]
    if data == "shared" and real is not None:
        return SHARED / real
    return SAMPLES / demo


def convert(algo: str, row: dict[str, Any]) -> dict[str, Any]:
    """One source row in the format both sides read (extra columns such as ids are left out)."""
    algo = family(algo)
    if algo == "dpo":
        return {k: row[k] for k in ("prompt", "chosen", "rejected")}
    if algo == "kto":
        return {"prompt": row["prompt"], "completion": row["completion"], "label": bool(row["label"])}
    if algo == "sft":
        if "instruction" in row:  # dolly: instruction (+ context) -> user turn, response -> assistant turn
            user = row["instruction"] + (f"\n\n{row['context']}" if row.get("context") else "")
            return {
                "prompt": [{"role": "user", "content": user}],
                "completion": [{"role": "assistant", "content": row["response"]}],
            }
        return {"prompt": row["prompt"], "completion": row["completion"]}
    if "question" in row:  # GSM8K: the question as the user's turn, the final number as the answer
        return {"prompt": [{"role": "user", "content": row["question"]}], "answer": row["final_answer"]}
    return {"prompt": row["prompt"], "answer": row["answer"]}


def prompt_length(tokenizer, prompt: Any) -> int:
    if isinstance(prompt, list):
        out = tokenizer.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True)
        return len(out["input_ids"] if hasattr(out, "keys") else out)
    return len(tokenizer(prompt)["input_ids"])


def fits(algo: str, row: dict[str, Any], tokenizer, max_length: int) -> bool:
    """Whether both sides keep the row: its prompt leaves room for a completion within ``max_length``.

    KTO rows must fit untruncated: when a completion is cut, the two libraries pair different KL tokens (TRL
    builds prompt i + the FULL completion i-1, then cuts to ``max_length``; lit-align's DataModule starts from
    completion i-1 as already cut to fit prompt i-1), so the sides would not do the same work.
    """
    if family(algo) == "grpo":
        return True
    if family(algo) != "kto":
        return prompt_length(tokenizer, row["prompt"]) < max_length
    from lit_align.datamodules.tokenize import tokenize_prompt_completions

    prompt_ids, (completion_ids,) = tokenize_prompt_completions(tokenizer, row["prompt"], [row["completion"]], "")
    return len(prompt_ids) + len(completion_ids) <= max_length


def select_rows(algo: str, source: Path, tokenizer, count: int, max_length: int) -> list[dict[str, Any]]:
    """The first ``count`` rows of ``source`` that both sides keep (see :func:`fits`)."""
    rows = []
    with source.open(encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            row = convert(algo, json.loads(line))
            if fits(algo, row, tokenizer, max_length):
                rows.append(row)
            if len(rows) == count:
                return rows
    raise SystemExit(f"{source}: only {len(rows)} usable rows, {count} needed (fewer --steps or --batch-size)")


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def lit_align_order(spec: dict[str, Any]) -> list[int]:
    """The row order lit-align's DataModule trains on in epoch 0, read from its own sampler (built as the run builds
    it); checks that no row is dropped."""
    from bench._runners import build_datamodule

    dm = build_datamodule(spec, notes=[], used={})
    dm.setup("fit")
    dropped = {k: v for k, v in dm.stats.items() if "dropped" in k}
    if dropped:
        raise SystemExit(f"{spec['rows']}: lit-align drops rows ({dropped}); the sides would not see the same data")
    sampler = dm.train_dataloader().sampler
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(0)
    return list(iter(sampler))


def prepare(algo: str, data: str, workdir: Path, tokenizer, count: int, settings: dict[str, Any]) -> dict[str, Any]:
    """Write ``<algo>_ours.jsonl`` (file order) and ``<algo>_trl.jsonl`` (lit-align's training order).

    ``settings``: ``model_dir``, ``batch_size``, ``max_length``, ``seed`` (a run's spec will do).
    """
    source = source_file(algo, data)
    rows = select_rows(algo, source, tokenizer, count, settings["max_length"])
    ours = write_jsonl(workdir / f"{family(algo)}_ours.jsonl", rows)
    order = lit_align_order({**settings, "algo": algo, "rows": str(ours)})
    if sorted(order) != list(range(count)):
        raise SystemExit(f"lit-align's sampler drew {len(order)} rows, expected a permutation of {count}")
    trl = write_jsonl(workdir / f"{family(algo)}_trl.jsonl", [rows[i] for i in order])
    return {"source": str(source), "rows": count, "ours": str(ours), "trl": str(trl)}
