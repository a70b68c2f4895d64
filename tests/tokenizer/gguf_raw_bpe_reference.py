"""The oracle for llmtune's GGUF BPE vocabularies over raw UTF-8 (tokenizer.ggml.pre gemma4,
granite-embed-multi-311m, sarvam-moe, whitespace): what llama.cpp's tokenizer and detokenizer do
for them, re-implemented in Python for this test, independently of llmtune's C++ pipeline.

Read from llama.cpp (github.com/ggml-org/llama.cpp at 00ad355e), src/llama-vocab.cpp:
- load(): gemma4 and granite-embed-multi-311m select LLAMA_VOCAB_PRE_TYPE_GEMMA4, sarvam-moe
  SARVAM_MOE, both with escape_whitespaces (sarvam-moe also clean_spaces off); "whitespace" selects
  WHITESPACE; every BPE vocabulary starts with clean_spaces on. GEMMA4 forces add_bos on.
- llm_tokenizer_bpe: GEMMA4 and SARVAM_MOE split with "[^\\n]+|[\\n]+", WHITESPACE with "\\S+"; all
  three with byte_encode off (no GPT-2 byte map).
- tokenize(): special tokens are cut out first; each text fragment has ' ' replaced by U+2581 when
  escape_whitespaces; tokenizer.ggml.model "whitespace" uses llm_tokenizer_whitespace_session, which
  drops White_Space characters and tokenizes what lies between them.
- llm_tokenizer_bpe_session::tokenize: BPE from single characters by merge rank (lowest, then
  leftmost); for GEMMA4 a piece of only '\\n' that is a token is taken whole; a final symbol that is
  not a token becomes the <0xXX> tokens of its bytes, those that exist (the others are dropped).
- token_to_piece / detokenize: control tokens as their text, byte tokens as their byte, normal
  tokens with U+2581 -> ' ' when escape_whitespaces, else through the inverse GPT-2 byte map; then
  the clean_spaces passes.
Where llama.cpp leans on its regex engine for "\\S+", White_Space (its is_whitespace table) is used.

The vocabulary is a raw-UTF-8 BPE trained here on the texts' pieces (escaped lines and
whitespace-free segments), with the 256 <0xXX> byte tokens, an alphabet that leaves out a few
characters (so byte fallback is exercised), whole tokens no merge reaches ("\\n\\n\\n" for
gemma4's newline rule), and <|endoftext|> (CONTROL) last.

Usage: gguf_raw_bpe_reference.py REQUEST.json RESPONSE.json
REQUEST: {"texts": [str], "merges": int}
RESPONSE: {"tokens": [str], "token_types": [int], "merges": ["a b"], "special": "<|endoftext|>",
           "variants": [{"model": str, "pre": str, "names": [str], "ids": [[int] per text],
                         "decoded": [str: llama.cpp's detokenized text], "faithful": [bool: decoded is
                         the text (whitespace dropped for the "whitespace" model)]}]}
"""
import json
import sys

import regex

from gguf_pre_reference import BYTES, SYNTHETIC

SPECIAL = "<|endoftext|>"
ESC = "\u2581"
WS = "\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
WS_RUN = regex.compile(f"[{WS}]+")
WS_OR_NOT = regex.compile(f"[{WS}]+|[^{WS}]+")
LINES = regex.compile(r"[^\n]+|[\n]+")
# Left out of the alphabet: 2-, 3- and 4-byte characters reach the vocabulary only as <0xXX>.
EXCLUDED = set("\u00f6\u306e")
WHOLE = ["\n\n\n", ESC * 4, ESC + "quick", "M\u00fcnchen"]
NORMAL, CONTROL, BYTE = 1, 3, 6
# (model, pre, the pre names read alike, escape spaces, gemma4's newline rule, clean_spaces)
VARIANTS = [("gpt2", "gemma4", ["gemma4", "granite-embed-multi-311m"], True, True, True),
            ("gpt2", "sarvam-moe", ["sarvam-moe"], True, False, False),
            ("whitespace", "whitespace", ["whitespace"], False, False, True),
            ("gpt2", "whitespace", ["whitespace"], False, False, True)]


def pieces(chunk, model, escape):
    if escape:
        return LINES.findall(chunk.replace(" ", ESC))
    if model == "whitespace":
        return [s for s in WS_RUN.split(chunk) if s]
    return WS_OR_NOT.findall(chunk)


def allowed(symbol):
    return not any(c in EXCLUDED or ord(c) >= 0x1F000 for c in symbol)


def train(words, n_merges):
    """Merges by pair frequency (ties: the smaller pair); none with a left-out character or making
    a run of three or more newlines."""
    counts = {}
    for w in words:
        counts[w] = counts.get(w, 0) + 1
    syms = [list(w) for w in counts]
    freq = list(counts.values())
    pairs, where = {}, {}

    def count(i, sign):
        w = syms[i]
        for p in zip(w, w[1:]):
            if allowed(p[0] + p[1]) and not (len(p[0] + p[1]) >= 3 and set(p[0] + p[1]) == {"\n"}):
                pairs[p] = pairs.get(p, 0) + sign * freq[i]
                where.setdefault(p, set()).add(i)

    for i in range(len(syms)):
        count(i, 1)
    merges = []
    while len(merges) < n_merges:
        live = [(c, p) for p, c in pairs.items() if c > 0]
        if not live:
            break
        best = min(live, key=lambda cp: (-cp[0], cp[1]))[1]
        merges.append(best)
        for i in where.pop(best, ()):
            count(i, -1)
            w, out, k = syms[i], [], 0
            while k < len(w):
                if k + 1 < len(w) and (w[k], w[k + 1]) == best:
                    out.append(w[k] + w[k + 1])
                    k += 2
                else:
                    out.append(w[k])
                    k += 1
            syms[i] = out
            count(i, 1)
        pairs = {p: c for p, c in pairs.items() if c > 0}
    return merges


def bpe(word, ranks):
    syms = list(word)
    while len(syms) > 1:
        best = None
        for i in range(len(syms) - 1):
            r = ranks.get((syms[i], syms[i + 1]))
            if r is not None and (best is None or r < best[0]):
                best = (r, i)
        if best is None:
            break
        i = best[1]
        syms[i:i + 2] = [syms[i] + syms[i + 1]]
    return syms


UNBYTES = {c: b for b, c in BYTES.items()}


def token_bytes(text, ttype, escape):
    if ttype == CONTROL:
        return text.encode()
    if ttype == BYTE:
        return bytes([int(text[3:5], 16)])
    if escape:
        return text.replace(ESC, " ").encode()
    out = b""
    for c in text:  # llama_decode_text: GPT-2's byte map backwards, or a marker
        if c in UNBYTES:
            out += bytes([UNBYTES[c]])
        else:
            out += b"[UNK_BYTE_0x" + c.encode().hex().encode() + text.encode() + b"]"
    return out


def clean_spaces(raw):
    """llama_vocab::impl::detokenize's three passes, in place on the bytes as there."""
    t, total = bytearray(raw), len(raw)

    def compact(keep_space_before):
        nonlocal total
        n, total = total, 1 if total else 0
        i = 1
        while i < n:
            x = t[i]
            total -= keep_space_before(i, n)
            t[total] = x
            total += 1
            i += 1

    compact(lambda i, n: t[i - 1] == 32 and t[i] in b"?!.,")

    def lone_apostrophe(i, n):
        if t[i] == 39 and i + 1 < n and t[i - 1] == 32 and t[i + 1] == 32:
            t[i + 1] = 0  # the next space: skipped below, and no longer a space when read back
            return 1
        return 0

    n, total = total, 1 if total else 0
    i = 1
    while i < n:
        x = t[i]
        if lone_apostrophe(i, n):
            total -= 1
            i += 1
        t[total] = x
        total += 1
        i += 1

    def contraction(i, n):
        if t[i - 1] != 32 or t[i] != 39 or i + 1 >= n:
            return 0
        if t[i + 1] in b"sm":
            return 1
        return int(t[i + 1] not in b"td" and i + 2 < n and bytes(t[i + 1:i + 3]) in (b"re", b"ve"))

    compact(contraction)
    return bytes(t[:total])


def main(request_path, response_path):
    req = json.load(open(request_path, encoding="utf-8"))
    texts = req["texts"]
    words = []
    for t in [t.replace(SPECIAL, " ") for t in texts] + SYNTHETIC * 40:
        words += pieces(t, "gpt2", True) + pieces(t, "whitespace", False)
    merges = train(words, req.get("merges", 500))
    alphabet = sorted({c for w in words for c in w if allowed(c)})
    tokens = [f"<0x{b:02X}>" for b in range(256)] + alphabet
    types = [BYTE] * 256 + [NORMAL] * len(alphabet)
    for a, b in merges:
        if a + b not in tokens:
            tokens.append(a + b)
            types.append(NORMAL)
    for w in WHOLE:
        if w not in tokens:
            tokens.append(w)
            types.append(NORMAL)
    tokens.append(SPECIAL)
    types.append(CONTROL)
    ids = {t: i for i, t in enumerate(tokens)}
    ranks = {m: r for r, m in enumerate(merges)}

    variants = []
    for model, pre, names, escape, newline_rule, clean in VARIANTS:
        def encode_piece(p):
            if newline_rule and set(p) == {"\n"} and p in ids:
                return [ids[p]]
            out = []
            for s in bpe(p, ranks):
                if s in ids:
                    out.append(ids[s])
                else:
                    out += [ids[f"<0x{b:02X}>"] for b in s.encode() if f"<0x{b:02X}>" in ids]
            return out

        all_ids, decoded, faithful = [], [], []
        for t in texts:
            result = []
            for k, chunk in enumerate(t.split(SPECIAL)):
                if k:
                    result.append(ids[SPECIAL])
                for p in pieces(chunk, model, escape):
                    result += encode_piece(p)
            raw = b"".join(token_bytes(tokens[i], types[i], escape) for i in result)
            text = raw.decode("utf-8", errors="replace") if not clean else \
                clean_spaces(raw).decode("utf-8", errors="replace")
            want = WS_RUN.sub("", t) if model == "whitespace" else t
            all_ids.append(result)
            decoded.append(text)
            faithful.append(text == want)
        variants.append({"model": model, "pre": pre, "names": names, "ids": all_ids, "decoded": decoded,
                         "faithful": faithful})
    json.dump({"tokens": tokens, "token_types": types, "merges": [f"{a} {b}" for a, b in merges],
               "special": SPECIAL, "variants": variants},
              open(response_path, "w", encoding="utf-8"), ensure_ascii=False, separators=(",", ":"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
