"""Seed inputs for the fuzz targets (tests/fuzz/README.md).

  make_seeds.py committed OUT       the small hand-made seeds committed under tests/fuzz/corpus/
  make_seeds.py fixtures FIXTURES ROOT OUT
                                    seeds derived from the test fixtures (FIXTURES: build/fixtures,
                                    skipped when absent) and the repository ROOT's shipped files
                                    (tests/data/chat_templates, configs/, demo/data), for
                                    scripts/fuzz.sh's working corpus

Each seed is written to OUT/<target>/<name>. Deterministic: the same files every run.
"""
import json
import struct
import sys
from pathlib import Path

import numpy as np

NUL = b"\0"


def write(out, target, name, data):
    d = Path(out) / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data if isinstance(data, bytes) else data.encode())


# --- safetensors -------------------------------------------------------------------------------

def safetensors_bytes(tensors, metadata=None, pad_to=8):
    """tensors: [(name, dtype string, shape, raw bytes)] laid out in order."""
    header, data, offset = {}, b"", 0
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        data += raw
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    if pad_to:
        text += b" " * (-len(text) % pad_to)
    return struct.pack("<Q", len(text)) + text + data


def committed_safetensors(out):
    f32 = np.arange(6, dtype=np.float32).tobytes()
    write(out, "safetensors", "f32-2x3.safetensors", safetensors_bytes([("w", "F32", [2, 3], f32)], {"format": "pt"}))
    write(out, "safetensors", "dtypes.safetensors", safetensors_bytes([
        ("a.bf16", "BF16", [2], b"\x80\x3f\x00\x40"), ("b.f16", "F16", [1], b"\x00\x3c"),
        ("c.i64", "I64", [1], struct.pack("<q", -5)), ("d.u8", "U8", [3], b"\x01\x02\x03"),
        ("e.bool", "BOOL", [2], b"\x01\x00"), ("f.i32", "I32", [1], struct.pack("<i", 7)),
        ("g.f64", "F64", [1], struct.pack("<d", 1.5)), ("h.i8", "I8", [1], b"\xff"),
        ("i.i16", "I16", [1], b"\x01\x00"), ("j.f8", "F8_E4M3", [2], b"\x38\x40")]))
    write(out, "safetensors", "scalar-and-empty.safetensors", safetensors_bytes([
        ("empty", "F32", [0, 4], b""), ("scalar", "F32", [], struct.pack("<f", 2.0))], {}))
    write(out, "safetensors", "unaligned.safetensors", safetensors_bytes([
        ("x", "U8", [1], b"\x07"), ("y", "F32", [1], struct.pack("<f", 3.0))], pad_to=0))
    write(out, "safetensors", "llama-names.safetensors", safetensors_bytes([
        ("model.embed_tokens.weight", "F16", [2, 2], b"\x00\x3c" * 4),
        ("model.layers.0.self_attn.q_proj.weight", "BF16", [2, 2], b"\x80\x3f" * 4),
        ("lm_head.weight", "F32", [2, 2], np.ones(4, dtype=np.float32).tobytes())],
        {"format": "pt", "note": "tiny"}))
    write(out, "safetensors", "header-only.safetensors", safetensors_bytes([]))


# --- GGUF --------------------------------------------------------------------------------------

def gguf_bytes(build, path):
    import gguf
    w = gguf.GGUFWriter(str(path), "llama")
    build(w, gguf)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    data = Path(path).read_bytes()
    Path(path).unlink()
    return data


def committed_gguf(out, tmp):
    def values(w, gguf):
        w.add_uint8("t.u8", 200)
        w.add_int8("t.i8", -3)
        w.add_uint16("t.u16", 60000)
        w.add_int16("t.i16", -30000)
        w.add_uint32("t.u32", 4000000000)
        w.add_int32("t.i32", -7)
        w.add_float32("t.f32", 0.5)
        w.add_uint64("t.u64", 2 ** 63)
        w.add_int64("t.i64", -(2 ** 62))
        w.add_float64("t.f64", 1e300)
        w.add_bool("t.bool", True)
        w.add_string("t.str", "h\u00e9llo")
        w.add_array("t.arr_i32", [1, 2, 3])
        w.add_array("t.arr_f32", [0.25, 0.5])
        w.add_array("t.arr_str", ["a", "bb", ""])
        w.add_array("t.arr_nested", [[1, 2], [3]])
        w.add_context_length(32)
        w.add_embedding_length(8)
        w.add_block_count(1)
        w.add_head_count(2)
        w.add_tensor("a", np.arange(8, dtype=np.float32).reshape(2, 4))
        w.add_tensor("b", np.ones(4, dtype=np.float16))
    write(out, "gguf", "values.gguf", gguf_bytes(values, tmp / "v.gguf"))

    def quants(w, gguf):
        from gguf import quants as q
        x = np.linspace(-1, 1, 512, dtype=np.float32).reshape(2, 256)
        for t in ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q6_K", "Q2_K", "Q3_K", "Q5_K", "BF16"):
            qt = gguf.GGMLQuantizationType[t]
            try:
                data = q.quantize(x, qt)
            except Exception:
                continue
            w.add_tensor(t.lower(), data, raw_shape=data.shape, raw_dtype=qt)
    write(out, "gguf", "quants.gguf", gguf_bytes(quants, tmp / "q.gguf"))

    def gpt2_vocab(w, gguf):
        byte_tokens = ["a", "b", "c", "ab", "\u0120", "\u0120a", "<s>", "</s>"]
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("llama-bpe")
        w.add_token_list(byte_tokens)
        w.add_token_types([1, 1, 1, 1, 1, 1, 3, 3])
        w.add_token_merges(["a b", "\u0120 a"])
        w.add_bos_token_id(6)
        w.add_eos_token_id(7)
        w.add_add_bos_token(True)
        w.add_chat_template("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    write(out, "gguf", "vocab-gpt2.gguf", gguf_bytes(gpt2_vocab, tmp / "g.gguf"))

    def llama_vocab(w, gguf):
        tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + ["\u2581", "\u2581a", "b"]
        w.add_tokenizer_model("llama")
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_scores([0.0] * 259 + [-1.0, -2.0, -3.0])
        w.add_token_types([2, 3, 3] + [6] * 256 + [1, 1, 1])
        w.add_unk_token_id(0)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_add_space_prefix(True)
    write(out, "gguf", "vocab-llama.gguf", gguf_bytes(llama_vocab, tmp / "l.gguf"))


# --- datasets ----------------------------------------------------------------------------------

def committed_dataset(out):
    rows = [
        {"instruction": "Say hi.", "input": "", "output": "Hi!"},
        {"instruction": "Add.", "input": "2 and 3", "output": "5", "system": "Be brief."},
    ]
    write(out, "dataset", "alpaca.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    msgs = {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q?"},
                         {"role": "assistant", "content": "A."}, {"role": "user", "content": "More"},
                         {"role": "assistant", "content": "Done."}]}
    write(out, "dataset", "messages.jsonl", json.dumps(msgs) + "\n" + json.dumps(
        {"conversations": [{"from": "human", "value": "hey"}, {"from": "gpt", "value": "yo"}]}) + "\n")
    tools = {"messages": [{"role": "user", "content": "weather?"},
                          {"role": "assistant", "content": "", "tool_calls": [
                              {"type": "function", "function": {"name": "get", "arguments": {"city": "Oslo"}}}]},
                          {"role": "tool", "content": "sunny"}, {"role": "assistant", "content": "Sunny."}],
             "tools": [{"type": "function", "function": {"name": "get", "parameters": {"type": "object"}}}]}
    write(out, "dataset", "tools.jsonl", json.dumps(tools) + "\n" +
          json.dumps(dict(tools, tools=json.dumps(tools["tools"]))) + "\n")
    write(out, "dataset", "completion.jsonl", json.dumps({"prompt": "1+1=", "completion": "2"}) + "\n\n" +
          json.dumps({"prompt": "", "completion": "x" * 80}) + "\r\n")
    write(out, "dataset", "text.jsonl", json.dumps({"text": "plain text \u00e9\u4e2d"}) + "\n" + json.dumps({"text": "more"}))
    write(out, "dataset", "array.json", "[\n  " + ",\n  ".join(json.dumps(r) for r in rows) + "\n]\n")
    write(out, "dataset", "bad-rows.jsonl", '{"instruction": 5, "output": "x"}\n[1, 2]\nnot json\n'
          '{"messages": []}\n{"text": ""}\n\xef\xbb\xbf{"text": "bom"}\n')


# --- tokenizer.json ----------------------------------------------------------------------------

def byte_level_tokenizer(extra):
    bs = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    vocab = {chr(c): b for b, c in zip(bs, cs)}
    vocab.update({"He": 256, "ll": 257, "Hell": 258, "\u0120w": 259})
    t = {"version": "1.0", "truncation": None, "padding": None,
         "added_tokens": [{"id": 260, "content": "<|endoftext|>", "single_word": False, "lstrip": False,
                           "rstrip": False, "normalized": False, "special": True}],
         "normalizer": None,
         "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
         "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
         "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
         "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                   "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                   "vocab": vocab, "merges": [["H", "e"], ["l", "l"], ["He", "ll"], ["\u0120", "w"]]}}
    t.update(extra)
    return json.dumps(t, ensure_ascii=False)


def committed_tokenizer(out):
    write(out, "tokenizer", "bytelevel.json", byte_level_tokenizer({}))
    write(out, "tokenizer", "split-regex-nfc.json", byte_level_tokenizer({
        "normalizer": {"type": "Sequence", "normalizers": [{"type": "NFC"}, {"type": "Replace",
                       "pattern": {"String": "\u00c5"}, "content": "A"}]},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": "(?i:'s|'t)|\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+|\\s+"},
             "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
        "post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}},
                           {"Sequence": {"id": "A", "type_id": 0}}], "pair": [],
                           "special_tokens": {"<|endoftext|>": {"id": "<|endoftext|>", "ids": [260], "tokens": ["<|endoftext|>"]}}}}))
    # SentencePiece-style BPE in tokenizer.json: Metaspace, byte fallback, decoder Sequence.
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = 3 + b
    for i, p in enumerate(["\u2581", "H", "e", "l", "o", "\u2581H", "ll", "\u2581He", "w", "\u2581w"]):
        vocab[p] = 259 + i
    spm = {"version": "1.0", "added_tokens": [
        {"id": i, "content": c, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True}
        for i, c in enumerate(["<unk>", "<s>", "</s>"])],
        "normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u2581"},
                                                           {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]},
        "pre_tokenizer": None,
        "post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                           {"Sequence": {"id": "A", "type_id": 0}}], "pair": [],
                           "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
        "decoder": {"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
                                                     {"type": "ByteFallback"}, {"type": "Fuse"},
                                                     {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                  "vocab": vocab, "merges": ["\u2581 H", "l l", "\u2581H e", "\u2581 w"]}}
    write(out, "tokenizer", "spm-legacy.json", json.dumps(spm, ensure_ascii=False))
    meta = dict(spm, normalizer=None,
                pre_tokenizer={"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": False},
                decoder={"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": False})
    write(out, "tokenizer", "spm-metaspace.json", json.dumps(meta, ensure_ascii=False))
    config = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
              "add_bos_token": True, "add_eos_token": False, "legacy": False,
              "added_tokens_decoder": {"0": {"content": "<unk>", "special": True}, "1": {"content": "<s>", "special": True},
                                       "2": {"content": "</s>", "special": True}},
              "additional_special_tokens": ["<extra>"], "chat_template": "{{ messages }}"}
    write(out, "tokenizer", "spm-with-llama-config.bin", json.dumps(spm, ensure_ascii=False).encode() + NUL + json.dumps(config).encode())
    write(out, "tokenizer", "bytelevel-with-config.bin", byte_level_tokenizer({}).encode() + NUL + json.dumps(
        {"bos_token": {"content": "<|endoftext|>", "lstrip": False, "rstrip": True}, "eos_token": "<|endoftext|>",
         "pad_token": None, "add_bos_token": True, "clean_up_tokenization_spaces": True,
         "chat_template": [{"name": "default", "template": "x"}, {"name": "tool_use", "template": "y"}]}).encode())


# --- chat templates ----------------------------------------------------------------------------

def committed_chat_template(out):
    write(out, "chat_template", "chatml.jinja",
          "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
    write(out, "chat_template", "features.jinja", """{%- set ns = namespace(n=0, s='') -%}
{%- for m in messages if m.role != 'tool' -%}
  {%- set ns.n = ns.n + 1 -%}
  {%- if loop.first and m['role'] == 'system' %}[SYS]{{ m.content | trim }}{% elif m.role == 'assistant' -%}
    {% generation %}{{ m.content }}{% if m.tool_calls is defined %}{{ m.tool_calls | tojson(indent=2) }}{% endif %}{{ eos_token }}{% endgeneration %}
  {%- else -%}{{ loop.index }}/{{ loop.length }} {{ (m.content if m.content is string else m.content[0].text) | upper | replace('A', 'a') }}
  {%- endif -%}
  {%- if loop.last %}{% break %}{% endif -%}
{%- endfor -%}
{{ [1, 2, 3] | join(', ') }} {{ 'x' if 'x' is string }} {{ tools | length if tools else 0 }} {{ ns.n * 2 // 3 % 5 }} {{ range(3) | list }}
{{ 'no' if false else 'ab'[::-1] ~ 'xyz'[1:] }} {{ {'k': [1, none, true]} | tojson }} {{ strftime_now('%Y') | length }}
{%- if not add_generation_prompt %}{{ raise_exception('no prompt') if messages | length > 100 }}{% endif %}
{{ messages | selectattr('role', 'equalto', 'user') | map(attribute='role') | unique | list | count }} {{ 'a,b'.split(',') }} {{ ' x '.strip().startswith('x') }}
{%- for k, v in {'a': 1, 'b': 2}.items() %}{{ k }}={{ v }}{% if not loop.last %},{% endif %}{% endfor %}
{%- set x %}captured {{ bos_token }}{% endset %}{{ x | length }}{# a comment #}{{ 'é' | lower }}{{ [3, 1, 2] | reverse | first }}""")
    write(out, "chat_template", "with-messages.bin", "{{ messages[0]['content'] }}{{ messages | length }}".encode() + NUL +
          json.dumps([{"role": "user", "content": "hi"}, {"role": "assistant", "content": None}]).encode())
    write(out, "chat_template", "loops.jinja", "{% for i in range(10) %}{% for j in range(i) %}{{ i * j }}{% continue %}{% endfor %}"
          "{% endfor %}{% set ns = namespace(s='ab') %}{% for _ in range(3) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}")


# --- YAML config -------------------------------------------------------------------------------

def committed_config(out):
    write(out, "config", "finetune.yaml", """# a run
model: {path: models/tiny}
output: runs/x
data:
  path: data/train.jsonl
  max_seq_len: 512
  packing: false
  val_fraction: 0.1
method: lora
lora:
  r: 16
  alpha: 32
  target_modules: [q_proj, v_proj]
train: {lr: 1.0e-4, max_steps: 100, adam_beta2: 0.95}
seed: 7
dtype: bf16
""")
    write(out, "config", "errors.yaml", "devce: cpu\nseed: many\ntrain:\n  lr: -1\n  unknown: 3\nmodel.path: x\n"
          "lora: {r: 1e9}\nfull:\n  freeze: notalist\n")
    write(out, "config", "anchors-and-overrides.bin", b"base: &b {lr: 0.1}\ntrain: *b\nmodel: {path: m}\noutput: o\n"
          b"data: {path: d}\n" + NUL + b"train.lr=3e-4" + NUL + b"lora.target_modules=[q_proj, k_proj]" + NUL +
          b"seed=" + NUL + b"nokey")
    write(out, "config", "multi-doc.yaml", "model: {path: a}\n---\noutput: b\n...\n")


# --- adapter_config.json ------------------------------------------------------------------------

def committed_adapter_config(out):
    base = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 8, "lora_alpha": 16, "lora_dropout": 0.05,
            "bias": "none", "target_modules": ["q_proj", "v_proj"], "base_model_name_or_path": "models/tiny",
            "use_rslora": False, "use_dora": False, "init_lora_weights": True, "inference_mode": True,
            "fan_in_fan_out": False, "modules_to_save": None, "layers_to_transform": None, "layers_pattern": None,
            "rank_pattern": {}, "alpha_pattern": {}}
    write(out, "adapter_config", "lora.json", json.dumps(base, indent=2))
    write(out, "adapter_config", "dora-regex.json", json.dumps(dict(
        base, use_dora=True, use_rslora=True, target_modules=".*\\.(q|k|v|o)_proj", exclude_modules=["k_proj"],
        rank_pattern={"q_proj": 4, "layers\\.1\\..*": 2}, alpha_pattern={"v_proj": 8.0})))
    write(out, "adapter_config", "layers.json", json.dumps(dict(
        base, target_modules="all-linear", layers_to_transform=[0], layers_pattern="layers", init_lora_weights="gaussian")))
    write(out, "adapter_config", "list-layers.json", json.dumps(dict(
        base, target_modules=["gate_proj", "up_proj", "down_proj"], layers_to_transform=1, layers_pattern=["layers", "h"],
        exclude_modules="lm_head|.*down.*")))


# --- derived from fixtures ---------------------------------------------------------------------

def shrink_safetensors(path, max_tensors=40):
    """A fixture's header (names, dtypes, metadata) over shapes cut to at most 2 per dimension, so
    the seed stays small."""
    raw = Path(path).read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    item_bytes = {"F64": 8, "I64": 8, "F32": 4, "I32": 4, "F16": 2, "BF16": 2, "I16": 2}
    tensors = []
    for name, info in list(header.items())[:max_tensors]:
        if name == "__metadata__":
            continue
        shape = [min(d, 2) for d in info["shape"]]
        n_bytes = int(np.prod(shape, dtype=np.int64)) * item_bytes.get(info["dtype"], 1)
        tensors.append((name, info["dtype"], shape, bytes(i % 251 for i in range(n_bytes))))
    return safetensors_bytes(tensors, header.get("__metadata__"))


def from_fixtures(fixtures, root, out):
    root, fixtures = Path(root), Path(fixtures)
    for st in sorted(fixtures.glob("models/*/model.safetensors")):
        write(out, "safetensors", f"fixture-{st.parent.name}.safetensors", shrink_safetensors(st))
    for tj in sorted(fixtures.glob("*/*/tokenizer.json")):
        name = f"fixture-{tj.parent.parent.name}-{tj.parent.name}"
        data = tj.read_bytes()
        write(out, "tokenizer", name + ".json", data)
        cfg = tj.parent / "tokenizer_config.json"
        if cfg.exists():
            write(out, "tokenizer", name + "-with-config.bin", data + NUL + cfg.read_bytes())
    for t in sorted((root / "tests" / "data" / "chat_templates").glob("*.jinja")):
        write(out, "chat_template", "shipped-" + t.name, t.read_bytes())
    for t in sorted(fixtures.glob("*/*/chat_template.jinja")):
        write(out, "chat_template", f"fixture-{t.parent.name}.jinja", t.read_bytes())
    for c in sorted((root / "configs").glob("*.yaml")):
        write(out, "config", "shipped-" + c.name, c.read_bytes())
    for d in sorted((root / "demo" / "data").glob("*.jsonl")):
        lines = d.read_bytes().splitlines(keepends=True)[:8]
        write(out, "dataset", "demo-" + d.name, b"".join(lines))


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "committed":
        out = Path(sys.argv[2])
        tmp = out / ".tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        committed_safetensors(out)
        committed_gguf(out, tmp)
        committed_dataset(out)
        committed_tokenizer(out)
        committed_chat_template(out)
        committed_config(out)
        committed_adapter_config(out)
        tmp.rmdir()
    elif len(sys.argv) == 5 and sys.argv[1] == "fixtures":
        from_fixtures(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
