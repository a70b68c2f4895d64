"""The Python side of the GGUF vocabulary file tests: gguf-py's GGUFReader on GGUF files llmtune
wrote, and transformers' own GGUF tokenizer loader on them beside AutoTokenizer on the original.

Usage: gguf_vocab_file_reference.py REQUEST.json RESPONSE.json
REQUEST: {"files": [{"path": str, "orig_dir": str}], "texts": [str]}
RESPONSE: {"files": [{"fields": {key: {"types": [type names], "value": contents()}} for the
tokenizer.* keys, "gguf": {"ids", "ids_plain"} (or "error": str), "orig": {"ids", "ids_plain"}}],
"is_nfc": [bool] per text}
"""
import json
import os
import sys
import unicodedata

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
import gguf  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402


def encodings(tok, texts):
    return {"ids": [tok.encode(t, add_special_tokens=True) for t in texts],
            "ids_plain": [tok.encode(t, add_special_tokens=False) for t in texts]}


def main(request_path, response_path):
    req = json.load(open(request_path, encoding="utf-8"))
    out = []
    for f in req["files"]:
        reader = gguf.GGUFReader(f["path"])
        fields = {}
        for key, field in reader.fields.items():
            if key.startswith("tokenizer."):
                fields[key] = {"types": [t.name for t in field.types], "value": field.contents()}
        entry = {"fields": fields}
        try:
            tok = AutoTokenizer.from_pretrained(os.path.dirname(f["path"]), gguf_file=os.path.basename(f["path"]))
            entry["gguf"] = encodings(tok, req["texts"])
        except Exception as e:  # characterized by the test, not hidden
            entry["error"] = f"{type(e).__name__}: {e}"
        entry["orig"] = encodings(AutoTokenizer.from_pretrained(f["orig_dir"]), req["texts"])
        out.append(entry)
    is_nfc = [unicodedata.is_normalized("NFC", t) for t in req["texts"]]
    json.dump({"files": out, "is_nfc": is_nfc}, open(response_path, "w", encoding="utf-8"), ensure_ascii=False)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
