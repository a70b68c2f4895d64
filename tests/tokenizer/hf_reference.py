"""The Python side of the tokenizer interop tests: one process per fixture directory.

Usage: hf_reference.py REQUEST.json RESPONSE.json
REQUEST: {"dir": str, "texts": [str], "decode": [[int]]}. RESPONSE: for each text, AutoTokenizer's
ids with and without special tokens and the decodes of the former (plain and skip_special_tokens);
"offsets_plain": for each text, return_offsets_mapping (add_special_tokens=False) converted from
character to byte offsets, and "is_nfc" per text; for each id list in "decode", its decode (plain and skip_special_tokens); "seconds": the time the
fast tokenizer took to encode all texts (add_special_tokens=True) one call at a time, and
"seconds_batch": its Rust backend's encode_batch on all texts (single thread), for the throughput report.

transformers 5's GPT2Tokenizer rebuilds a bare ByteLevel pipeline around the vocabulary and drops the
normalizer and pre-tokenizer that tokenizer.json ships (huggingface/transformers#44254: SmolLM's
Digits splitter is lost). The model was trained with the file's pipeline and transformers 4 used it, so
llmtune keeps it: the reference restores those two stages from tokenizer.json and lists them under "restored".
"""
import json
import os
import sys
import time
import unicodedata

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
from tokenizers import Tokenizer  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402


def byte_offsets(tok, text):
    """HF's character offsets of text's tokens (no special tokens added) as UTF-8 byte offsets."""
    at = [0]
    for ch in text:
        at.append(at[-1] + len(ch.encode("utf-8", errors="surrogatepass")))
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    return [[at[b], at[e]] for b, e in enc["offset_mapping"]]


def load_reference(directory):
    """AutoTokenizer, with tokenizer.json's normalizer and pre-tokenizer put back where GPT2Tokenizer
    replaced them; returns the tokenizer and the names of the restored stages."""
    tok = AutoTokenizer.from_pretrained(directory)
    path = os.path.join(directory, "tokenizer.json")
    restored = []
    if type(tok).__name__ == "GPT2Tokenizer" and os.path.isfile(path):
        shipped = json.load(open(path, encoding="utf-8"))
        built = json.loads(tok.backend_tokenizer.to_str())
        from_file = Tokenizer.from_file(path)
        for stage in ("normalizer", "pre_tokenizer"):
            if shipped.get(stage) != built.get(stage):
                setattr(tok.backend_tokenizer, stage, getattr(from_file, stage))
                restored.append(stage)
    return tok, restored


def main(request_path, response_path):
    req = json.load(open(request_path, encoding="utf-8"))
    tok, restored = load_reference(req["dir"])
    texts = req["texts"]
    start = time.perf_counter()
    with_special = [tok.encode(t, add_special_tokens=True) for t in texts]
    seconds = time.perf_counter() - start
    start = time.perf_counter()
    tok.backend_tokenizer.encode_batch(texts, add_special_tokens=True)
    seconds_batch = time.perf_counter() - start
    out = {
        "seconds": seconds,
        "seconds_batch": seconds_batch,
        "ids": with_special,
        "ids_plain": [tok.encode(t, add_special_tokens=False) for t in texts],
        "decoded": [tok.decode(ids) for ids in with_special],
        "decoded_skip": [tok.decode(ids, skip_special_tokens=True) for ids in with_special],
        "decode": [tok.decode(ids) for ids in req.get("decode", [])],
        "decode_skip": [tok.decode(ids, skip_special_tokens=True) for ids in req.get("decode", [])],
        "vocab_size": len(tok),
        "offsets_plain": [byte_offsets(tok, t) for t in texts],
        "is_nfc": [unicodedata.is_normalized("NFC", t) for t in texts],
        "restored": restored,
    }
    json.dump(out, open(response_path, "w", encoding="utf-8"), ensure_ascii=False)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
