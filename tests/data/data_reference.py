"""The Python side of the data tests: an independent reference for rendering, tokenizing and label
masks, with transformers' apply_chat_template and the HF tokenizer's offsets. One process per call.

Usage: data_reference.py REQUEST.json RESPONSE.json
REQUEST: {"cases": [{"dir", "template" (Jinja source or null: the tokenizer's own), "format", "row",
"train_on"}]}. RESPONSE: {"results": [{"text", "input_ids", "labels", "assistant_masks" (only for
templates with {% generation %}), "ids_of_text"} or {"error": str}]}.
Labels: a token is trained when its first character (HF return_offsets_mapping) lies in a trained
span; an assistant message's span is [len(render(messages[:i], add_generation_prompt=True)),
len(render(messages[:i+1]))) without trailing whitespace.
"""
import json
import os
import sys

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
from transformers import AutoTokenizer  # noqa: E402

IGNORE = -100
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system",
                  "tool": "tool", "observation": "tool"}


def to_messages(row, fmt, template_is_alpaca):
    if fmt == "alpaca":
        msgs = []
        if row.get("system"):
            msgs.append({"role": "system", "content": row["system"]})
        inp = row.get("input") or ""
        if template_is_alpaca:
            user = {"role": "user", "content": row["instruction"]}
            if inp:
                user["input"] = inp
        else:
            user = {"role": "user", "content": row["instruction"] + ("\n\n" + inp if inp else "")}
        return msgs + [user, {"role": "assistant", "content": row["output"]}], None
    tools = None
    if fmt == "tools":
        tools = row["tools"]
        if isinstance(tools, str):
            tools = json.loads(tools)
    if "messages" in row:
        return list(row["messages"]), tools
    return [{"role": SHAREGPT_ROLES[m["from"]], "content": m["value"]} for m in row["conversations"]], tools


def render(tok, messages, tools, gen):
    return tok.apply_chat_template(messages, tools=tools, add_generation_prompt=gen, tokenize=False)


def chat_case(tok, case):
    messages, tools = to_messages(case["row"], case["format"], case.get("template_name") == "alpaca")
    full = render(tok, messages, tools, False)
    spans = []
    if case["train_on"] == "all":
        spans = [(0, len(full))]
    else:
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            prompt = render(tok, messages[:i], tools, True)
            done = render(tok, messages[:i + 1], tools, False)
            assert full.startswith(done) and done.startswith(prompt), "template is not prefix-stable"
            end = len(done)
            while end > len(prompt) and done[end - 1] in " \n\t\r":
                end -= 1
            if end > len(prompt):
                spans.append((len(prompt), end))
    ids = tok.apply_chat_template(messages, tools=tools, tokenize=True, return_dict=True)["input_ids"]
    enc = tok(full, add_special_tokens=False, return_offsets_mapping=True)
    labels = [i if any(b <= s < e for b, e in spans) else IGNORE for i, (s, _) in zip(enc["input_ids"], enc["offset_mapping"])]
    out = {"text": full, "input_ids": list(ids), "ids_of_text": enc["input_ids"], "labels": labels}
    if "{% generation %}" in (tok.chat_template or "") or "{%- generation %}" in (tok.chat_template or ""):
        d = tok.apply_chat_template(messages, tools=tools, tokenize=True, return_dict=True,
                                    return_assistant_tokens_mask=True)
        out["assistant_masks"] = list(d["assistant_masks"])
    return out


def plain_case(tok, case):
    row, fmt = case["row"], case["format"]
    prompt, completion = (row["prompt"], row["completion"]) if fmt == "completion" else ("", row["text"])
    text = prompt + completion
    enc = tok(text, add_special_tokens=True, return_offsets_mapping=True, return_special_tokens_mask=True)
    ids = list(enc["input_ids"])
    if fmt == "text" or case["train_on"] == "all":
        labels = list(ids)
    else:
        labels = [i if not special and s >= len(prompt) else IGNORE
                  for i, (s, _), special in zip(ids, enc["offset_mapping"], enc["special_tokens_mask"])]
    if not ids or ids[-1] != tok.eos_token_id:
        ids.append(tok.eos_token_id)
        labels.append(tok.eos_token_id)
    return {"text": text, "input_ids": ids, "ids_of_text": ids, "labels": labels}


def main(request_path, response_path):
    req = json.load(open(request_path, encoding="utf-8"))
    toks, results = {}, []
    for case in req["cases"]:
        key = (case["dir"], case.get("template"))
        if key not in toks:
            tok = AutoTokenizer.from_pretrained(case["dir"])
            if case.get("template") is not None:
                tok.chat_template = case["template"]
            toks[key] = tok
        tok = toks[key]
        try:
            if case["format"] in ("completion", "text"):
                results.append(plain_case(tok, case))
            else:
                results.append(chat_case(tok, case))
        except Exception as e:  # reported per case; the C++ test fails on it
            results.append({"error": f"{type(e).__name__}: {e}"})
    json.dump({"results": results}, open(response_path, "w", encoding="utf-8"), ensure_ascii=False)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
