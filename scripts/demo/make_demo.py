"""Generates the bundled demo (demo/): the datasets, the tokenizer and the model config, from our
own word lists (words.py) and sentence templates below; deterministic (fixed seeds, one thread), so
a rerun gives the same bytes. The weights come from pretraining with llmtune (scripts/demo/make_demo.sh).

  python make_demo.py data DEMO_DIR           demo/data/{pretrain,train,val}.jsonl
  python make_demo.py model DEMO_DIR          demo/model/ tokenizer + config (no weights)
  python make_demo.py weights DEMO_DIR SRC    copy SRC/model.safetensors into demo/model as bf16
  python make_demo.py check DEMO_DIR          load demo/model in transformers, print its shape

Tasks (instruction set): opposites, plurals, + - * on small numbers, reversing and sorting short
lists, capital letters, counting and spelling letters. The pretraining corpus states the same facts
in plain prose and never uses the Alpaca layout, so a LoRA run visibly teaches the format.
"""
import json
import os
import random
import sys
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAYON_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from words import (ANIMALS, COLOURS, FRUITS, NAMES, OPPOSITES, PLACES, PLURALS, number_word, plural,  # noqa: E402
                   spelling_words)

N_TRAIN, N_VAL, N_PRETRAIN = 2000, 100, 6000
SEED = 20240604

# The Alpaca prompt layout that `data.template: alpaca` renders (prompt, then the response + EOS).
ALPACA_PREAMBLE = ("Below is an instruction that describes a task{}. "
                   "Write a response that appropriately completes the request.\n\n")
ALPACA_WITH_INPUT = (ALPACA_PREAMBLE.format(", paired with an input that provides further context")
                     + "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n")
ALPACA_NO_INPUT = ALPACA_PREAMBLE.format("") + "### Instruction:\n{instruction}\n\n### Response:\n"

BOS, EOS, PAD = "<s>", "</s>", "<pad>"
VOCAB_SIZE = 1024
# The model's chat template renders a user turn in the Alpaca layout (no input section), so
# `llmtune infer --model demo/model --adapter ... --prompt "What is the opposite of hot?"` asks the
# question the way the adapter was trained.
CHAT_TEMPLATE = (
    "{{- bos_token }}{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}"
    "{{- '" + ALPACA_NO_INPUT.replace("\n", "\\n").replace("{instruction}", "' + message['content'] + '") + "' }}"
    "{%- elif message['role'] == 'assistant' %}{{- message['content'] + eos_token }}"
    "{%- else %}{{- raise_exception('the demo template knows only user and assistant turns') }}"
    "{%- endif %}{%- endfor %}")
MODEL_CONFIG = dict(vocab_size=VOCAB_SIZE, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-5,
                    rope_theta=10000.0, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def render_alpaca(row):
    template = ALPACA_WITH_INPUT if row["input"] else ALPACA_NO_INPUT
    return template.format(instruction=row["instruction"], input=row["input"])


def spelled(word):
    return "-".join(word)


def join(items):
    return ", ".join(str(x) for x in items)


# ---- instruction tasks: each returns (instruction, input, output) --------------------------------
# Every task has an inline phrasing (no input) and one with the item in the input field.

def task_opposite(r):
    a, b = r.choice(OPPOSITES)
    w, o = (a, b) if r.random() < 0.5 else (b, a)
    return r.choice([(f"What is the opposite of {w}?", "", f"The opposite of {w} is {o}."),
                     (f"Give the opposite of the word {w}.", "", f"The opposite of {w} is {o}."),
                     ("Give the opposite of this word.", w, f"The opposite of {w} is {o}.")])


def task_plural(r):
    s, p = r.choice(PLURALS)
    return r.choice([(f"What is the plural of {s}?", "", f"The plural of {s} is {p}."),
                     (f"Write the plural form of {s}.", "", f"The plural of {s} is {p}."),
                     ("Write the plural of this noun.", s, f"The plural of {s} is {p}.")])


def task_arithmetic(r):
    op = r.choice("+-*")
    if op == "+":
        a, b = r.randint(0, 20), r.randint(0, 20)
        c, asks = a + b, [f"What is {a} plus {b}?", f"Add {a} and {b}."]
        inp = ("Add these two numbers.", f"{a} and {b}")
    elif op == "-":
        a = r.randint(0, 20)
        b = r.randint(0, a)
        c, asks = a - b, [f"What is {a} minus {b}?", f"Subtract {b} from {a}."]
        inp = ("Subtract the second number from the first.", f"{a} and {b}")
    else:
        a, b = r.randint(1, 10), r.randint(1, 10)
        c, asks = a * b, [f"What is {a} times {b}?", f"Multiply {a} by {b}."]
        inp = ("Multiply these two numbers.", f"{a} and {b}")
    answer = f"{a} {op} {b} = {c}."
    return r.choice([(asks[0], "", answer), (asks[1], "", answer), (inp[0], inp[1], answer)])


def random_list(r):
    kind = r.random()
    if kind < 0.4:
        return r.sample(range(0, 100), r.randint(3, 5))
    pool = COLOURS if kind < 0.6 else ANIMALS if kind < 0.8 else FRUITS
    return r.sample(pool, r.randint(3, 5))


def task_reverse(r):
    items = random_list(r)
    answer = f"Reversed: {join(items[::-1])}."
    return r.choice([(f"Reverse this list: {join(items)}", "", answer),
                     ("Reverse the order of the list.", join(items), answer)])


def task_sort(r):
    items = random_list(r)
    answer = f"Sorted: {join(sorted(items))}."
    if isinstance(items[0], int):
        return r.choice([(f"Sort these numbers from smallest to largest: {join(items)}", "", answer),
                         ("Sort the numbers from smallest to largest.", join(items), answer)])
    return r.choice([(f"Put these words in alphabetical order: {join(items)}", "", answer),
                     ("Sort the words in alphabetical order.", join(items), answer)])


def task_capitals(r):
    words = spelling_words()
    phrase = " ".join(r.sample(words, r.randint(1, 3)))
    answer = f"In capital letters: {phrase.upper()}."
    return r.choice([(f"Write {phrase} in capital letters.", "", answer),
                     ("Write this in capital letters.", phrase, answer)])


def task_letters(r):
    w = r.choice(spelling_words())
    if r.random() < 0.5:
        answer = f"The word {w} has {len(w)} letters."
        return r.choice([(f"How many letters are in the word {w}?", "", answer),
                         ("Count the letters in this word.", w, answer)])
    answer = f"The word {w} is spelled {spelled(w)}."
    return r.choice([(f"Spell the word {w}.", "", answer), ("Spell this word letter by letter.", w, answer)])


TASKS = [task_opposite, task_plural, task_arithmetic, task_reverse, task_sort, task_capitals, task_letters]


def instruction_rows(r, n):
    """n distinct rows, the tasks in equal shares."""
    rows, seen = [], set()
    while len(rows) < n:
        task = TASKS[len(rows) % len(TASKS)]
        for _ in range(1000):
            instruction, inp, output = task(r)
            if (instruction, inp) not in seen:
                break
        seen.add((instruction, inp))
        rows.append({"instruction": instruction, "input": inp, "output": output})
    return rows


# ---- pretraining corpus: the same facts, in prose --------------------------------------------------

def fact_opposite(r):
    a, b = r.choice(OPPOSITES)
    if r.random() < 0.5:
        a, b = b, a
    return r.choice([f"The opposite of {a} is {b}.", f"{a.capitalize()} is the opposite of {b}.",
                     f"{a.capitalize()} and {b} are opposites.",
                     f"Some things are {a} and some things are {b}; {a} is the opposite of {b}."])


def fact_plural(r):
    s, p = r.choice(PLURALS)
    n = r.randint(2, 12)
    return r.choice([f"The plural of {s} is {p}.", f"One {s}, two {p}.",
                     f"{r.choice(NAMES)} saw one {s} at the {r.choice(PLACES)}, and then {number_word(n)} {p}.",
                     f"We say a {s} for one and {p} for more than one."])


def fact_arithmetic(r):
    op = r.choice("+-*")
    if op == "+":
        a, b = r.randint(0, 20), r.randint(0, 20)
        c, name = a + b, "plus"
    elif op == "-":
        a = r.randint(0, 20)
        b = r.randint(0, a)
        c, name = a - b, "minus"
    else:
        a, b = r.randint(1, 10), r.randint(1, 10)
        c, name = a * b, "times"
    return r.choice([f"{a} {op} {b} = {c}.", f"{a} {name} {b} is {c}.",
                     f"{number_word(a).capitalize()} {name} {number_word(b)} makes {number_word(c)}, so {a} {op} {b} = {c}."])


def fact_list(r):
    items = random_list(r)
    name = r.choice(NAMES)
    if isinstance(items[0], int) and r.random() < 0.4:
        start = r.randint(0, 90)
        up = list(range(start, start + r.randint(3, 6)))
        return f"Counting up: {join(up)}. Counting down: {join(up[::-1])}."
    return r.choice([f"{name} wrote a list: {join(items)}. Read backwards, it is {join(items[::-1])}.",
                     f"From first to last the list is {join(items)}, and from last to first it is {join(items[::-1])}.",
                     (f"In order from smallest to largest, {join(items)} becomes {join(sorted(items))}."
                      if isinstance(items[0], int) else
                      f"In alphabetical order, {join(items)} becomes {join(sorted(items))}.")])


def fact_word(r):
    w = r.choice(spelling_words())
    n = len(w)
    return r.choice([f"The word {w} has {n} letters.", f"The word {w} is spelled {spelled(w)}.",
                     f"{w.capitalize()} is spelled {spelled(w)} and has {number_word(n)} letters.",
                     f"In capital letters, {w} is written {w.upper()}.", f"{w.upper()} is {w} in capital letters."])


def fact_story(r):
    name, other = r.sample(NAMES, 2)
    place = r.choice(PLACES)
    weather = r.choice(["hot", "cold", "wet", "dry", "light", "dark", "long", "short", "quiet", "loud"])
    colour, animal, fruit = r.choice(COLOURS), r.choice(ANIMALS), r.choice(FRUITS)
    return r.choice([f"{name} went to the {place} with {other}.",
                     f"{name} has a {colour} {animal} and likes to eat a {fruit}.",
                     f"At the {place} the day was {weather}, and {name} stayed until the evening.",
                     f"{other} gave {name} {number_word(r.randint(2, 9))} {plural(fruit)} from the {place}."])


FACTS = [fact_opposite, fact_plural, fact_arithmetic, fact_list, fact_word, fact_story]


def pretrain_rows(r, n):
    return [{"text": " ".join(r.choice(FACTS)(r) for _ in range(r.randint(3, 6)))} for _ in range(n)]


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def make_data(demo):
    r = random.Random(SEED)
    rows = instruction_rows(r, N_TRAIN + N_VAL)
    r.shuffle(rows)
    write_jsonl(demo / "data" / "train.jsonl", rows[:N_TRAIN])
    write_jsonl(demo / "data" / "val.jsonl", rows[N_TRAIN:])
    corpus = pretrain_rows(random.Random(SEED + 1), N_PRETRAIN)
    r = random.Random(SEED + 2)
    r.shuffle(corpus)
    n_val = N_PRETRAIN // 50
    write_jsonl(demo / "data" / "pretrain.jsonl", corpus[n_val:])
    write_jsonl(demo / "data" / "pretrain_val.jsonl", corpus[:n_val])


# ---- tokenizer and config ----------------------------------------------------------------------

LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def train_tokenizer(texts):
    """Byte-level BPE with the Llama 3 pre-tokenizer split; <pad> 0, <s> 1 (BOS), </s> 2 (EOS)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, min_frequency=2, show_progress=False,
                                  special_tokens=[PAD, BOS, EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    assert tok.get_vocab_size() == VOCAB_SIZE, tok.get_vocab_size()
    assert [tok.token_to_id(t) for t in (PAD, BOS, EOS)] == [0, 1, 2]
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A:0 {BOS}:1 $B:1", special_tokens=[(BOS, 1)])])
    return tok


def write_json(path, obj):
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def make_model(demo):
    import transformers as tf
    data = demo / "data"
    if not (data / "pretrain.jsonl").exists():
        make_data(demo)
    texts = [row["text"] for row in read_jsonl(data / "pretrain.jsonl")]
    texts += [render_alpaca(row) + row["output"] for row in read_jsonl(data / "train.jsonl")]
    tok = train_tokenizer(texts)
    d = demo / "model"
    d.mkdir(parents=True, exist_ok=True)
    write_json(d / "tokenizer.json", json.loads(tok.to_str()))
    special = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True}
    write_json(d / "tokenizer_config.json", {
        "added_tokens_decoder": {str(i): dict(content=t, **special) for i, t in enumerate((PAD, BOS, EOS))},
        "bos_token": BOS, "eos_token": EOS, "pad_token": PAD, "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False, "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": MODEL_CONFIG["max_position_embeddings"], "tokenizer_class": "PreTrainedTokenizerFast"})
    write_json(d / "special_tokens_map.json", {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD})
    config = tf.LlamaConfig(**MODEL_CONFIG)
    config.dtype = "bfloat16"
    config.save_pretrained(str(d))
    write_json(d / "generation_config.json", {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0})


def install_weights(demo, src):
    """Casts the pretrained weights (llmtune's out/model) to bf16 into demo/model/model.safetensors."""
    from safetensors.torch import load_file, save_file
    import torch
    src = Path(src)
    index = src / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else ["model.safetensors"]
    tensors = {}
    for f in files:
        tensors.update(load_file(str(src / f)))
    if MODEL_CONFIG["tie_word_embeddings"] and "lm_head.weight" in tensors:
        # Tied: the embedding is the output layer too, and transformers stores it once.
        head = tensors.pop("lm_head.weight")
        if not torch.equal(head, tensors["model.embed_tokens.weight"]):
            raise SystemExit(f"{src}: lm_head.weight differs from model.embed_tokens.weight, but the demo model ties them")
    tensors = {k: v.to(torch.bfloat16).contiguous() for k, v in sorted(tensors.items())}
    out = demo / "model" / "model.safetensors"
    save_file(tensors, str(out), metadata={"format": "pt"})
    out.chmod(0o644)


def check(demo):
    import torch
    import transformers as tf
    d = demo / "model"
    tok = tf.AutoTokenizer.from_pretrained(str(d))
    config = tf.AutoConfig.from_pretrained(str(d))
    if (d / "model.safetensors").exists():
        model = tf.AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.float32)
    else:
        torch.manual_seed(0)
        model = tf.LlamaForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())
    ids = tok("The opposite of hot is cold.")["input_ids"]
    assert ids[0] == tok.bos_token_id == 1 and tok.eos_token_id == 2 and tok.pad_token_id == 0, ids
    assert len(tok) <= config.vocab_size
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is 3 plus 4?"}], tokenize=False)
    assert prompt == BOS + ALPACA_NO_INPUT.format(instruction="What is 3 plus 4?"), repr(prompt)
    with torch.no_grad():
        loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([ids])).loss.item()
    rows = {name: read_jsonl(demo / "data" / f"{name}.jsonl") for name in ("train", "val", "pretrain", "pretrain_val")}
    tokens = {name: sum(len(tok(r.get("text") or render_alpaca(r) + r["output"])["input_ids"]) + 1 for r in rs)
              for name, rs in rows.items()}
    print(f"model: {config.model_type}, {n_params:,} parameters (tied embeddings: {config.tie_word_embeddings}), "
          f"hidden {config.hidden_size}, {config.num_hidden_layers} layers, {config.num_attention_heads} heads, "
          f"{config.num_key_value_heads} kv heads, vocab {config.vocab_size}; loss on a sample {loss:.3f}")
    for name, rs in rows.items():
        print(f"{name}: {len(rs)} rows, {tokens[name]:,} tokens")


def main(argv):
    if len(argv) < 2 or argv[0] not in ("data", "model", "weights", "check"):
        raise SystemExit(__doc__)
    demo = Path(argv[1])
    if argv[0] == "data":
        make_data(demo)
    elif argv[0] == "model":
        make_model(demo)
    elif argv[0] == "weights":
        install_weights(demo, argv[2])
    else:
        check(demo)


if __name__ == "__main__":
    main(sys.argv[1:])
