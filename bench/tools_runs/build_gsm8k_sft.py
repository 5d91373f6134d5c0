"""Cold-start SFT data for the calculator tool on GSM8K, and held-out evaluation prompts.

Each GSM8K solution's <<expr=value>> annotations become calculator calls (at most MAX_CALLS per row; rows with more
are skipped, as are rows whose expressions the calculator refuses or whose result disagrees with the annotation).
Output rows are prompt/completion pairs: prompt = [system (with_tool_instructions), user], completion = the
assistant turns with the tool messages between them. Train them with tool_sft.py (assistant-only loss): lit_align's
SFT would train the tool messages too, and its "messages" format only the LAST assistant turn (see README.md).
"""
import json
import re
import sys
from collections import Counter
from fractions import Fraction

from lit_align.tools.calculator import calculator
from lit_align.tools.chat import with_tool_instructions

DATA = "/work/shared/data/gsm8k/train_normalized.jsonl"
USER = "{q} Use the calculator for the arithmetic. End with: The answer is <number>."
MAX_CALLS = 4
ANN = re.compile(r"<<([^=<>]+)=([^<>]+)>>")


def tool_call(expr):
    return "<tool_call>\n" + json.dumps({"name": "calculator", "arguments": {"expression": expr}}) + "\n</tool_call>"


def main(n_train_rows=2000, out="/tmp/tools_runs/data/gsm8k_calc_sft.jsonl", n_eval=64,
         eval_out="bench/tools_runs/data/gsm8k_heldout64.jsonl"):
    rows = [json.loads(line) for line in open(DATA)]
    stats = Counter()
    conversations = []
    for row in rows[:n_train_rows]:
        anns = ANN.findall(row["solution"])
        if not anns:
            stats["no_annotation"] += 1
            continue
        if len(anns) > MAX_CALLS:
            stats["more_than_4_calls"] += 1
            continue
        prompt = with_tool_instructions([{"role": "user", "content": USER.format(q=row["question"])}],
                                        [calculator])
        msgs, ok = [], True
        for expr, value in anns:
            try:
                result = calculator(expr)
            except Exception:
                stats["calculator_refused"] += 1
                ok = False
                break
            try:
                if Fraction(result) != Fraction(value.strip().replace(",", "")):
                    stats["result_mismatch"] += 1
                    ok = False
                    break
            except (ValueError, ZeroDivisionError):
                stats["annotation_unparsable"] += 1
                ok = False
                break
            msgs.append({"role": "assistant", "content": tool_call(expr)})
            msgs.append({"role": "tool", "name": "calculator", "content": result})
        if not ok:
            continue
        msgs.append({"role": "assistant", "content": f"The answer is {row['final_answer']}."})
        conversations.append((prompt, msgs))
        stats["kept"] += 1
    with open(out, "w") as f:  # one row per conversation; tool_sft.py trains only its assistant turns
        for prompt, msgs in conversations:
            f.write(json.dumps({"prompt": prompt, "completion": msgs}) + "\n")
            stats["sft_rows"] += 1
    with open(out.replace(".jsonl", "_conversations.jsonl"), "w") as f:
        for prompt, msgs in conversations:
            f.write(json.dumps({"messages": prompt + msgs}) + "\n")
    with open(eval_out, "w") as f:
        for row in rows[7000:7000 + n_eval]:
            f.write(json.dumps({"prompt": [{"role": "user", "content": USER.format(q=row["question"])}],
                                "answer": row["final_answer"], "final_answer": row["final_answer"]}) + "\n")
    print(dict(stats))


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:2]))
