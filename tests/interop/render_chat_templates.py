"""Renders chat-template test cases with transformers' own Jinja environment, the oracle for the
C++ chat-template engine (tests/tokenizer/test_chat_template*.cpp).

Usage: render_chat_templates.py CASES.json OUT.json
CASES.json is a list of {"template": str, "mode": "hf" | "jinja", "context": {...}}:
  hf     transformers.utils.chat_template_utils.render_jinja_template(conversations=[messages],
         tools, documents, chat_template, add_generation_prompt, return_assistant_tokens_mask=True,
         **other context keys) -- what apply_chat_template(tokenize=False) renders;
  jinja  the same compiled environment's template.render(**context), for engine unit cases.
OUT.json is a list, one per case: {"ok": true, "output": str, "spans": [[b, e], ...] (hf only,
character offsets of {% generation %} output)} or {"ok": false, "error": "Type: message"}.
"""
import json
import sys


def render_case(case):
    from transformers.utils.chat_template_utils import _compile_jinja_template, render_jinja_template

    context = dict(case["context"])
    if case["mode"] == "jinja":
        return {"output": _compile_jinja_template(case["template"]).render(**context)}
    messages = context.pop("messages")
    tools = context.pop("tools", None)
    documents = context.pop("documents", None)
    add_generation_prompt = context.pop("add_generation_prompt", False)
    rendered, spans = render_jinja_template(
        conversations=[messages], tools=tools, documents=documents, chat_template=case["template"],
        add_generation_prompt=add_generation_prompt, return_assistant_tokens_mask=True, **context)
    return {"output": rendered[0], "spans": [list(s) for s in spans[0]]}


def main(cases_path, out_path):
    import transformers.utils.logging as hf_logging

    hf_logging.set_verbosity_error()  # the missing-{% generation %} warning is expected
    with open(cases_path, encoding="utf-8") as f:
        cases = json.load(f)
    results = []
    for case in cases:
        try:
            results.append({"ok": True, **render_case(case)})
        except Exception as e:  # every failure is a result the C++ side must reproduce
            results.append({"ok": False, "error": f"{type(e).__name__}: {e}"})
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(results, f, ensure_ascii=False)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
