"""The Python side of the GGUF vocabulary tests: what llama.cpp's convert_hf_to_gguf.py would write
for each directory's tokenizer, and what AutoTokenizer answers on a list of texts.

Usage: gguf_vocab_reference.py REQUEST.json RESPONSE.json
REQUEST: {"cases": [{"dir": str, "vocab_size": int (0: the tokenizer's own size)}], "texts": [str]}
RESPONSE: {"cases": [{"path": "spm" | "llama_hf" | "gpt2", "model", "tokens", "scores" (null for
gpt2), "types", "merges", "ids": {"bos", "eos", "unk", "pad", "eot"} (null when unset),
"add_bos", "add_eos" (null when unset), "chat_template" (null when unset), "add_space_prefix",
"hf": {"ids", "ids_plain", "decoded", "decoded_skip"} per text}]}.

The converter's choice (LlamaModel.set_vocab) is followed: tokenizer.model through SentencePiece,
else gguf-py's LlamaHfVocab, else get_vocab_base (the GPT-2 path). LlamaHfVocab and SpecialVocab
are gguf-py's own classes; the SentencePiece and GPT-2 paths are re-implemented here from
convert_hf_to_gguf.py (_create_vocab_sentencepiece, get_vocab_base, does_token_look_special),
which gguf-py does not ship. Two documented differences from the converter, where llmtune writes
what the converter leaves broken: LlamaHfVocab's scores are all -1000 (here: -rank of the merge
that makes a token, from tokenizer.json), and LlamaHfVocab does not pad to vocab_size.
"""
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
import gguf  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


def looks_special(t):
    return (t in ("<pad>", "<mask>", "<2mass>", "[@BOS@]") or (t.startswith("<|") and t.endswith("|>"))
            or (t.startswith("<\uff5c") and t.endswith("\uff5c>")) or (t.startswith("<unused") and t.endswith(">")))


def spm_vocab(d, vocab_size):
    from sentencepiece import SentencePieceProcessor
    sp = SentencePieceProcessor()
    sp.LoadFromFile(str(d / "tokenizer.model"))
    n = vocab_size or sp.vocab_size()
    tokens = [f"[PAD{i}]" for i in range(n)]
    scores = [-10000.0] * n
    types = [UNUSED] * n
    for i in range(min(n, sp.vocab_size())):
        t = NORMAL
        if sp.IsUnknown(i):
            t = UNKNOWN
        elif sp.IsControl(i):
            t = CONTROL
        elif sp.IsUnused(i):
            t = UNUSED
        elif sp.IsByte(i):
            t = BYTE
        tokens[i], scores[i], types[i] = sp.IdToPiece(i), sp.GetScore(i), t
    if (d / "added_tokens.json").is_file():
        for key, i in json.loads((d / "added_tokens.json").read_text(encoding="utf-8")).items():
            if i < n:
                tokens[i], scores[i], types[i] = key, -1000.0, USER_DEFINED
    cfg = d / "tokenizer_config.json"
    if cfg.is_file():
        for key, data in json.loads(cfg.read_text(encoding="utf-8")).get("added_tokens_decoder", {}).items():
            i, content = int(key), data["content"]
            if i >= n:
                continue
            if data.get("special") or looks_special(content):
                types[i] = CONTROL
            else:
                content = content.replace("\u2581", " ")
                types[i] = USER_DEFINED
            scores[i], tokens[i] = -1000.0, content
    return tokens, scores, types


def merge_scores(d, tokens, types):
    """llmtune's scores for a LlamaHfVocab: -rank of the first merge making a normal token."""
    model = json.loads((d / "tokenizer.json").read_text(encoding="utf-8"))["model"]
    ids = {t: i for i, t in enumerate(tokens)}
    made = {}
    merges = [m for m in model["merges"] if not (isinstance(m, str) and m.startswith("#version"))]
    for rank, m in enumerate(merges):
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        i = ids.get(a + b)
        if i is not None and i not in made:
            made[i] = -float(rank)
    return [(-1000.0 if types[i] != NORMAL else made.get(i, -(len(merges) + 1.0))) for i in range(len(tokens))]


def llama_hf_vocab(d, vocab_size):
    v = gguf.vocab.LlamaHfVocab(d)
    tokens, types = [], []
    for text, _score, t in v.all_tokens():
        tokens.append(text.decode("utf-8"))
        types.append(int(t))
    scores = merge_scores(d, tokens, types)
    for i in range(len(tokens), vocab_size):
        tokens.append(f"[PAD{i}]")
        types.append(UNUSED)
        scores.append(-1000.0)
    return tokens, scores, types


def gpt2_vocab(d, vocab_size):
    tok = AutoTokenizer.from_pretrained(d)
    vocab = tok.get_vocab()
    n = vocab_size or len(vocab)
    assert max(vocab.values()) < n
    reverse = {i: t for t, i in vocab.items()}
    added = tok.get_added_vocab()
    decoder = tok.added_tokens_decoder
    tokens, types = [], []
    for i in range(n):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
            continue
        t = reverse[i]
        if t in added:
            if not decoder[i].normalized:
                t = tok.decode(tok.encode(t, add_special_tokens=False))
            if decoder[i].special or looks_special(t):
                types.append(CONTROL)
            else:
                t = t.replace("\u2581", " ")
                types.append(USER_DEFINED)
        else:
            types.append(NORMAL)
        tokens.append(t)
    return tokens, None, types


def convert(d, vocab_size):
    if (d / "tokenizer.model").is_file():
        path, (tokens, scores, types) = "spm", spm_vocab(d, vocab_size)
    else:
        try:
            path, (tokens, scores, types) = "llama_hf", llama_hf_vocab(d, vocab_size)
        except (FileNotFoundError, TypeError):
            path, (tokens, scores, types) = "gpt2", gpt2_vocab(d, vocab_size)
    llama = path != "gpt2"
    special = gguf.SpecialVocab(d, load_merges=not llama, n_vocab=len(tokens) if llama else None)
    ids = {k: special.special_token_ids.get(k) for k in ("bos", "eos", "unk", "pad", "eot")}
    chat = special.chat_template
    if isinstance(chat, list):
        chat = next((c["template"] for c in chat if c.get("name") == "default"), None)
    add_space_prefix = None
    cfg = d / "tokenizer_config.json"
    if llama and cfg.is_file():
        add_space_prefix = json.loads(cfg.read_text(encoding="utf-8")).get("add_prefix_space")
    return {"path": path, "model": "llama" if llama else "gpt2", "tokens": tokens, "scores": scores, "types": types,
            "merges": list(special.merges), "ids": ids, "add_bos": special.add_special_token.get("bos"),
            "add_eos": special.add_special_token.get("eos"), "chat_template": chat, "add_space_prefix": add_space_prefix}


def hf_answers(d, texts):
    tok = AutoTokenizer.from_pretrained(d)
    ids = [tok.encode(t, add_special_tokens=True) for t in texts]
    return {"ids": ids, "ids_plain": [tok.encode(t, add_special_tokens=False) for t in texts],
            "decoded": [tok.decode(i) for i in ids], "decoded_skip": [tok.decode(i, skip_special_tokens=True) for i in ids]}


def main(request_path, response_path):
    req = json.load(open(request_path, encoding="utf-8"))
    out = []
    for case in req["cases"]:
        d = Path(case["dir"])
        entry = convert(d, case.get("vocab_size", 0))
        entry["hf"] = hf_answers(d, req["texts"])
        out.append(entry)
    json.dump({"cases": out}, open(response_path, "w", encoding="utf-8"), ensure_ascii=False)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
