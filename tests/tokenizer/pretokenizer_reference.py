"""The Python side of the pre-tokenizer unit tests: huggingface/tokenizers' own pre-tokenizer, built
from a tokenizer.json "pre_tokenizer" section, run on each text.

Usage: pretokenizer_reference.py REQUEST.json RESPONSE.json
REQUEST: {"pre_tokenizer": {...}, "texts": [str]}. RESPONSE: {"pieces": for each text, a list of
[piece, begin, end]: pre_tokenize_str's pieces with their offsets in the text as UTF-8 byte offsets}.
"""
import json
import sys

from tokenizers import Tokenizer


def byte_offset_table(text):
    at = [0]
    for ch in text:
        at.append(at[-1] + len(ch.encode("utf-8")))
    return at


def main(request_path, response_path):
    req = json.load(open(request_path, encoding="utf-8"))
    model = {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
             "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "vocab": {}, "merges": []}
    spec = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
            "pre_tokenizer": req["pre_tokenizer"], "post_processor": None, "decoder": None, "model": model}
    pre = Tokenizer.from_str(json.dumps(spec)).pre_tokenizer
    pieces = []
    for text in req["texts"]:
        at = byte_offset_table(text)
        pieces.append([[p, at[b], at[e]] for p, (b, e) in pre.pre_tokenize_str(text)])
    json.dump({"pieces": pieces}, open(response_path, "w", encoding="utf-8"), ensure_ascii=False)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
