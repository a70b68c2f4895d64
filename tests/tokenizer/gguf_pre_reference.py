"""The oracle for llmtune's GGUF byte-level pre-tokenizers (tokenizer.ggml.pre): what llama.cpp's
BPE tokenizer does for each pre-tokenizer type, re-implemented in Python with the `regex` package.

Transcribed for this test, independently of llmtune's C++ table, from llama.cpp
(github.com/ggml-org/llama.cpp at 00ad355e, src/llama-vocab.cpp: the `tokenizer_pre == "..."` chain that sets
LLAMA_VOCAB_PRE_TYPE_* and ignore_merges, and llm_tokenizer_bpe's regex_exprs per type; src/unicode.cpp:
unicode_regex_split applies the regexes in sequence, each one cutting every piece of the previous one
at the start and end of its matches, then maps bytes as GPT-2 does). Where llama.cpp adapts a pattern
to its own engine and keeps the original beside it, the original is used: the tokenizer.json patterns
of Tekken, GPT-4o/o200k, tiny_aya and BailingMoE, Moonshot's pat_str for kimi-k2 (tokenization_kimi.py,
which llama.cpp's custom splitter approximates); o200k's for granite-embed-multi-97m, whose lookahead
form in llama.cpp approximates it. llama.cpp's (?:'[sS]|'[tT]|...) spelling of
(?i:'s|'t|...) and its GPT-2 pattern without the final \\s+ are kept: the splits are the same. One
addition: NFC first for the Qwen2 and Qwen3.5 types, as their tokenizer.json normalizers do (llama.cpp
skips it; llmtune follows the tokenizer.json).

The vocabulary is a small byte-level BPE trained here on the texts, split only at spaces so that
its merges cross the boundaries the pre-tokenizers differ on, plus a few whole words no merge path
reaches (ignore_merges takes them whole) and <|endoftext|>.

Each type is also written as a tokenizer.json (its regexes as Isolated Splits before ByteLevel, NFC
and ignore_merges as flagged) and run through huggingface tokenizers (Oniguruma): a second engine for
the same splits, and the files llmtune's export reads to name the pre-tokenizer.

The four BPE types over raw UTF-8 (gemma4, granite-embed-multi-311m, sarvam-moe, whitespace) have
their own oracle, gguf_raw_bpe_reference.py, which imports the byte map and training texts here.

Usage: gguf_pre_reference.py REQUEST.json RESPONSE.json
REQUEST: {"texts": [str], "merges": int}
RESPONSE: {"tokens": [str], "merges": ["a b"], "special": "<|endoftext|>",
           "types": [{"type": str, "names": [str], "ids": [[int] per text],
                      "sections": {"normalizer", "pre_tokenizer", "ignore_merges"} of its tokenizer.json,
                      "hf_mismatches": [text index where tokenizers' ids differ]}]}
"""
import json
import sys
import unicodedata
from collections import Counter

import regex
from tokenizers import Tokenizer

# ---- llama.cpp's regex lists ---------------------------------------------------------------------

GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
LLAMA3 = CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
QWEN2 = CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
JAIS2 = (CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
         r"|\s{512}(?!\S)|\s{256}(?!\S)|\s{128}(?!\S)|\s{64}(?!\S)|\s{32}(?!\S)|\s{16}(?!\S)|\s{8}(?!\S)"
         r"|\s{4}(?!\S)|\s{1,2}(?!\S)|\s{1}")
QWEN35 = (CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+"
          r"|\s+(?!\S)|\s+")
UPPER = r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]"
LOWER = r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]"
CONTRACTIONS_I = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)"
TEKKEN = (rf"[^\r\n\p{{L}}\p{{N}}]?{UPPER}*{LOWER}+|[^\r\n\p{{L}}\p{{N}}]?{UPPER}+{LOWER}*|\p{{N}}"
          r"| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
O200K = (rf"[^\r\n\p{{L}}\p{{N}}]?{UPPER}*{LOWER}+{CONTRACTIONS_I}?|[^\r\n\p{{L}}\p{{N}}]?{UPPER}+{LOWER}*"
         rf"{CONTRACTIONS_I}?|\p{{N}}{{1,3}}| ?[^\s\p{{L}}\p{{N}}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# Moonshot's pat_str: class intersections (&&) need the regex package's version 1 syntax.
KIMI_UPPER = r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]"
KIMI_LOWER = r"[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]"
KIMI = (rf"(?V1)[\p{{Han}}]+|[^\r\n\p{{L}}\p{{N}}]?{KIMI_UPPER}*{KIMI_LOWER}+{CONTRACTIONS_I}?"
        rf"|[^\r\n\p{{L}}\p{{N}}]?{KIMI_UPPER}+{KIMI_LOWER}*{CONTRACTIONS_I}?|\p{{N}}{{1,3}}"
        r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
CHINESE_DS = "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+"
DS_LETTERS = (
    r"\s?[A-Za-z\u00b5\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af"
    r"\u0370-\u0373\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3-\u03f5"
    r"\u03f7-\u0481\u048a-\u052f\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba"
    r"\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45"
    r"\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe"
    r"\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102"
    r"\u2107\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139"
    r"\u213c-\u213f\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3"
    r"\ua640-\ua66d\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf\ufb00-\ufb06"
    r"\ufb13-\ufb17\uff21-\uff3a\uff41-\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3"
    r"\U000104d8-\U000104fb\U00010c80-\U00010cb2\U00010cc0-\U00010cf2\U000118a0-\U000118df"
    r"\U0001e900-\U0001e943]+")
DS_PUNCT = r"\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+"
DS3_MAIN = (r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"
            r"| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
DS3 = [r"\p{N}{1,3}", r"[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+", DS3_MAIN]
SPARK = [r"\p{N}{1,3}", r"[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",
         r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+"
         r"|[\r\n]|\s+(?!\S)|\s+", r"\p{N}"]
YOUTU = [r"[\uac00-\ud7a3\u3131-\u318e]+|[\uff01\u2026\u201c\u201d\u2018\u2019\u2014\uff1a\uff1b\uff0c\u3001-\u303f"
         r"\ufe30-\ufe4f]+|[\u3105-\u312f]+|[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",
         rf"[^\r\n\p{{L}}\p{{N}}]?{UPPER}*{LOWER}+{CONTRACTIONS}?|[^\r\n\p{{L}}\p{{N}}]?{UPPER}+{LOWER}*"
         rf"{CONTRACTIONS}?|\p{{N}}| ?[^\s\p{{L}}\p{{N}}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"]
PORO = r" ?[^(\s|.,!?\u2026\u3002\uff0c\u3001\u0964\u06d4\u060c)]+"
PUNCT_FALCON = r"[\p{P}\$\+<=>\^~\|]+"
STARCODER = [r"\p{N}", GPT2]
AFMOE_DIGITS = "afmoe-digits"  # unicode_regex_split_custom_afmoe, below
AFMOE = [AFMOE_DIGITS,
         "[\u4e00-\u9fff\u3400-\u4dbf\uf900-\ufaff\u3040-\u309f\u30a0-\u30ff\uff65-\uff9f\u2f00-\u2fdf"
         "\u0e40-\u0e7f\u0e80-\u0eff\u1780-\u17ff\u1000-\u109f\uaa60-\uaa7f\ua9e0-\ua9ff\uac00-\ud7af"
         "\u1100-\u11ff]+", DS3_MAIN]
BAILING = (r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)"
           r"|\s+")
SEED = CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+"
EXAONE_MOE = (CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?(?:\p{L}\p{M}*(?: \p{L}\p{M}*)*)+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]?"
              r"|\s*[\r\n]|\s+(?!\S)|\s+")
MINICPM5 = [r"\p{N}{1,3}", CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}+| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
            r"|\s+(?!\S)|\s+"]
IM, NFC = "ignore_merges", "nfc"

# (LLAMA_VOCAB_PRE_TYPE_*, the tokenizer.ggml.pre names that select it, regex_exprs, flags)
TYPES = [
    ("DEFAULT", ["default"], [PUNCT_FALCON, GPT2, r"\p{N}+", "[0-9][0-9][0-9]"], ()),
    ("MINICPM5", ["minicpm5"], MINICPM5, (IM,)),
    ("LLAMA3", ["llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2",
                "jina-v5-nano"], [LLAMA3], (IM,)),
    ("DEEPSEEK_LLM", ["deepseek-llm"], ["[\r\n]", DS_LETTERS, DS_PUNCT, r"\s+$", CHINESE_DS, r"\p{N}+"], ()),
    ("DEEPSEEK_CODER", ["deepseek-coder"], ["[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", CHINESE_DS, r"\p{N}"], ()),
    ("DEEPSEEK3_LLM", ["deepseek-v3"], DS3, ()),
    ("SPARK2_5", ["spark2_5"], SPARK, ()),
    ("YOUTU", ["youtu"], YOUTU, (IM,)),
    ("FALCON", ["falcon"], [PUNCT_FALCON, GPT2, "[0-9][0-9][0-9]"], ()),
    ("MPT", ["mpt"], [GPT2], ()),
    ("STARCODER", ["starcoder"], STARCODER, ()),
    ("GPT2", ["gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de", "a.x-4.0", "mellum",
              "modern-bert", "jina-v1-en", "jina-v2-code", "roberta-bpe", "exaone4"], [GPT2], ()),
    ("JAIS2", ["jais-2"], [JAIS2], ()),
    ("REFACT", ["refact"], STARCODER, ()),
    ("COMMAND_R", ["command-r"], STARCODER, ()),
    ("QWEN2", ["qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez"], [QWEN2], (NFC,)),
    ("QWEN35", ["qwen35"], [QWEN35], (NFC,)),
    ("STABLELM2", ["stablelm2"], [QWEN2], ()),
    ("OLMO", ["olmo"], [GPT2], ()),
    ("DBRX", ["dbrx"], [LLAMA3], ()),
    ("SMAUG", ["smaug-bpe"], [LLAMA3], ()),
    ("PORO", ["poro-chat"], [PORO], ()),
    ("CHATGLM4", ["glm4", "chatglm-bpe"], [LLAMA3], ()),
    ("VIKING", ["viking"], [PORO, r"\p{N}"], ()),
    ("JAIS", ["jais"], [GPT2], ()),
    ("TEKKEN", ["tekken"], [TEKKEN], (IM,)),
    ("SMOLLM", ["smollm"], STARCODER, ()),
    ("CODESHELL", ["codeshell"], STARCODER, ()),
    ("BLOOM", ["bloom"], [PORO], ()),
    ("GPT3_FINNISH", ["gpt3-finnish"], [PORO], ()),
    ("EXAONE", ["exaone"], STARCODER, ()),
    ("EXAONE_MOE", ["exaone-moe"], [EXAONE_MOE], ()),
    ("CHAMELEON", ["chameleon"], ["<sentinel:[0-9]+>", "(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z", "([\t\n]|    |  )",
                                  r"\p{N}", r"[\p{P}!-/:-@\[-`{-~]", GPT2], ()),
    ("MINERVA", ["minerva-7b"], STARCODER, ()),
    ("GPT4O", ["gpt-4o", "llama4", "kanana2", "talkie"], [O200K], ()),
    ("GRANITE_EMB_MULTI", ["granite-embed-multi-97m"], [O200K], (IM,)),
    ("TINY_AYA", ["tiny_aya", "cohere2moe"], [r"\d{1,3}(?=(?:\d{3})*\b)", O200K], ()),
    ("SUPERBPE", ["superbpe"], [r"\p{N}+", r"(?=(\d{3})+(?!\d))"], ()),
    ("TRILLION", ["trillion"], [GPT2], ()),
    ("GRANITE_DOCLING", ["granite-docling"], [GPT2], ()),
    ("BAILINGMOE", ["bailingmoe", "bailingmoe2", "llada-moe"], [BAILING], ()),
    ("SEED_CODER", ["seed-coder"], [SEED], ()),
    ("HUNYUAN", ["hunyuan"], [QWEN2], ()),
    ("HUNYUAN_DENSE", ["hunyuan-dense"], DS3, ()),
    ("HY_V4", ["hy_v4"], DS3, ()),
    ("JOYAI_LLM", ["joyai-llm"], DS3, ()),
    ("KIMI_K2", ["kimi-k2"], [KIMI], ()),
    ("UFAKZEKA", ["ufakzeka"], [r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"], ()),
    ("GROK_2", ["grok-2"], [QWEN2], ()),
    ("AFMOE", ["afmoe"], AFMOE, ()),
    ("LAGUNA", ["laguna"], [r"[^\n]+|[\n]+", QWEN2], ()),
    ("MINIMAX_M2", ["minimax-m2"], [O200K], ()),
    ("SOLAR_OPEN", ["solar-open"], [QWEN2], ()),
    ("MELLUM2", ["mellum2"], STARCODER, ()),
]

# ---- the splitter and byte-level BPE -------------------------------------------------------------

NUMBER_RUN = regex.compile(r"\p{N}+")


def afmoe_digit_cuts(piece):
    """unicode_regex_split_custom_afmoe: a run of numbers splits into its first len % 3, then threes."""
    cuts = set()
    for m in NUMBER_RUN.finditer(piece):
        pos = m.start() + (m.end() - m.start()) % 3
        cuts.update((m.start(), m.end(), pos))
        while pos < m.end():
            pos += 3
            cuts.add(pos)
    return cuts


def split(pieces, pattern):
    out = []
    for p in pieces:
        if pattern == AFMOE_DIGITS:
            cuts = afmoe_digit_cuts(p)
        else:
            cuts = set()
            for m in pattern.finditer(p):
                cuts.update(m.span())
        cuts = sorted(cuts | {0, len(p)})
        out.extend(p[a:b] for a, b in zip(cuts, cuts[1:]) if a < b)
    return out


def byte_map():
    keep = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


BYTES = byte_map()


def to_bytes(s):
    return "".join(BYTES[b] for b in s.encode("utf-8"))


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


def train(texts, n_merges):
    """Merges by pair frequency (ties: the smaller pair) over words split at spaces only."""
    counts = Counter()
    for t in texts:
        for w in regex.findall(r" ?[^ ]+| +", t):
            counts[tuple(to_bytes(w))] += 1
    words = [list(w) for w in counts]
    freq = list(counts.values())
    pairs, where = Counter(), {}
    for i, w in enumerate(words):
        for p in zip(w, w[1:]):
            pairs[p] += freq[i]
            where.setdefault(p, set()).add(i)
    merges = []
    while len(merges) < n_merges and pairs:
        best = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[0]
        merges.append(best)
        for i in where.pop(best, ()):
            w = words[i]
            for p in zip(w, w[1:]):
                pairs[p] -= freq[i]
            out, k = [], 0
            while k < len(w):
                if k + 1 < len(w) and (w[k], w[k + 1]) == best:
                    out.append(w[k] + w[k + 1])
                    k += 2
                else:
                    out.append(w[k])
                    k += 1
            words[i] = out
            for p in zip(out, out[1:]):
                pairs[p] += freq[i]
                where.setdefault(p, set()).add(i)
        pairs = Counter({p: c for p, c in pairs.items() if c > 0})
    return merges


# Training text that makes merges across the cuts the pre-tokenizers disagree on: digit runs,
# contractions, whitespace runs, punctuation next to letters and spaces.
SYNTHETIC = [
    "1234567890 12 345 6789 2026 0.5 3.14 1e-5 10,000 123456 99 2e-4 v2.14.7",
    "it's we're I've you'll she'd I'm don't IT'S WE'RE O'Brien's rock'n'roll",
    "\n\n\n  \t\t \r\n\r\n    x\n  \n\t\n   \u3000 \u00a0\u00a0", "a     b         c", "x.\n\ny;\r\n",
    "(a), [b]; {c}: d! e? f... g-- h// i:: j== k+= l->m <n> 'o' \"p\" q.r,s_t",
    "def f(x):\n    return x**2  # ok\n\tif a==b: pass\r\n}",
    "'sam x'sam y'tcha",
    "a\n\nb\n\n\nc x       y 'verb it'sam don'tcha 中文English混合text 我想在apple工作 日本語のtext",
]
SPECIAL = "<|endoftext|>"
# Whole words without a merge path to them (unless training happens to make one).
WHOLE = [" quick", " brown", " Tokenizers", " München", " 東京", " 2026", "\n\n", "    "]


# AFMoE's digit splitter as a regex, for the tokenizer.json.
AFMOE_DIGITS_REGEX = r"\p{N}{1,3}(?=(?:\p{N}{3})*(?!\p{N}))"


def published(e):
    """A pattern as a tokenizer.json spells it: \\u escapes as the characters, no inline version flag."""
    if e == AFMOE_DIGITS:
        return AFMOE_DIGITS_REGEX
    e = e.removeprefix("(?V1)")
    return regex.sub(r"\\u([0-9a-f]{4})|\\U([0-9a-f]{8})", lambda m: chr(int(m.group(1) or m.group(2), 16)), e)


def pre_sections(exprs, flags):
    """The tokenizer.json normalizer, pre_tokenizer and model.ignore_merges of a type."""
    splits = [{"type": "Split", "pattern": {"Regex": published(e)}, "behavior": "Isolated", "invert": False}
              for e in exprs]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
    return {"normalizer": {"type": "NFC"} if NFC in flags else None,
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": splits + [byte_level]},
            "ignore_merges": IM in flags}


def tokenizer_json(sections, tokens, merges):
    return {
        "version": "1.0",
        "added_tokens": [{"id": len(tokens) - 1, "content": SPECIAL, "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False, "special": True}],
        "normalizer": sections["normalizer"],
        "pre_tokenizer": sections["pre_tokenizer"],
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": sections["ignore_merges"], "vocab": {t: i for i, t in enumerate(tokens)},
                  "merges": [f"{a} {b}" for a, b in merges]},
    }


def main(request_path, response_path):
    req = json.load(open(request_path, encoding="utf-8"))
    texts = req["texts"]
    merges = train([t.replace(SPECIAL, " ") for t in texts] + SYNTHETIC * 40, req.get("merges", 300))
    tokens = [BYTES[b] for b in range(256)]
    for a, b in merges:
        if a + b not in tokens:
            tokens.append(a + b)
    for w in WHOLE:
        if to_bytes(w) not in tokens:
            tokens.append(to_bytes(w))
    tokens.append(SPECIAL)
    ids = {t: i for i, t in enumerate(tokens)}
    ranks = {m: r for r, m in enumerate(merges)}
    types = []
    for name, names, exprs, flags in TYPES:
        compiled = [e if e == AFMOE_DIGITS else regex.compile(e) for e in exprs]
        cache = {}

        def encode_piece(piece):
            if piece not in cache:
                mapped = to_bytes(piece)
                syms = [mapped] if IM in flags and mapped in ids else bpe(mapped, ranks)
                cache[piece] = [ids[s] for s in syms]
            return cache[piece]

        out = []
        for t in texts:
            result = []
            for k, chunk in enumerate(t.split(SPECIAL)):
                if k:
                    result.append(ids[SPECIAL])
                if NFC in flags:
                    chunk = unicodedata.normalize("NFC", chunk)
                pieces = [chunk] if chunk else []
                for c in compiled:
                    pieces = split(pieces, c)
                for p in pieces:
                    result.extend(encode_piece(p))
            out.append(result)
        sections = pre_sections(exprs, flags)
        hf = Tokenizer.from_str(json.dumps(tokenizer_json(sections, tokens, merges)))
        mismatches = [i for i, (e, ours) in enumerate(zip(hf.encode_batch(texts, add_special_tokens=False), out))
                      if e.ids != ours]
        types.append({"type": name, "names": names, "ids": out, "sections": sections, "hf_mismatches": mismatches})
    json.dump({"tokens": tokens, "merges": [f"{a} {b}" for a, b in merges], "special": SPECIAL, "types": types},
              open(response_path, "w", encoding="utf-8"), ensure_ascii=False, separators=(",", ":"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
