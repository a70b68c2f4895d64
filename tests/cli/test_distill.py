"""`llmtune distill` end to end: a smaller qwen2 student learning from the qwen2 fixture. Ten real
steps equal a transformers + PEFT + torch AdamW loop whose loss is TRL's GKD generalized JSD
(LoRA and full students); the step loss is normalised by the trained positions of the whole step
(grad accumulation = one padded batch = the batch without an untrainable row); the summary and
metrics.jsonl carry the distillation's parts."""
import json
import os
import shutil

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from test_finetune import MODELS, chat_rows, write_jsonl

TEACHER = MODELS / "qwen2"
IGNORE = -100
JSD = {"loss": "jsd", "beta": 0.3, "temperature": 2.0, "kd_ratio": 0.7}
FORWARD_KL = {"loss": "forward_kl", "temperature": 1.0, "kd_ratio": 0.5}
REVERSE_KL = {"loss": "reverse_kl", "temperature": 1.5, "kd_ratio": 0.25}


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    """A qwen2 student with the teacher's tokenizer but 1 layer of width 32 (the teacher: 2 of 64),
    randomly initialised (seeded) with a wider init so that its distribution is far from uniform,
    saved in float32 like the fixtures."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(TEACHER))
    assert str(config.dtype).removeprefix("torch.") == "float32"
    config.num_hidden_layers, config.hidden_size, config.intermediate_size = 1, 32, 64
    config.num_attention_heads, config.num_key_value_heads = 2, 1
    config.layer_types = config.layer_types[:1]
    config.initializer_range = 0.1
    torch.manual_seed(1234)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    out = tmp_path_factory.mktemp("student")
    model.save_pretrained(str(out))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
                 "chat_template.jinja"):
        if (TEACHER / name).exists():
            shutil.copy(TEACHER / name, out / name)
    return out


def distill_args(setting):
    args = [f"distill.loss={setting['loss']}", f"distill.temperature={setting['temperature']}",
            f"distill.kd_ratio={setting['kd_ratio']}"]
    return args + ([f"distill.beta={setting['beta']}"] if "beta" in setting else [])


def run_distill(llmtune, student, data, out, steps, *extra):
    r = llmtune("distill", "--model", student, "--teacher", TEACHER, "--data", data, "--output", out,
                "--max-steps", steps, "data.packing=false", "--json", *extra, timeout=300)
    assert r.code == 0, r.err
    return r


def metrics(out):
    return [j for j in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in j]


def padded_batch(llmtune, data, n_rows):
    """The rows' token ids and labels as `llmtune tokenize --row` gives them (checked against HF
    elsewhere), right-padded into one batch: ids, attention mask, labels (B, T)."""
    examples = []
    for i in range(n_rows):
        t = llmtune("tokenize", "--model", TEACHER, "--data", data, "--row", i + 1, "--json")
        assert t.code == 0, t.err
        j = json.loads(t.out)
        examples.append((j["input_ids"], j["labels"]))
    width = max(len(ids) for ids, _ in examples)
    ids = torch.tensor([e[0] + [0] * (width - len(e[0])) for e in examples])
    mask = torch.tensor([[1] * len(e[0]) + [0] * (width - len(e[0])) for e in examples])
    labels = torch.tensor([e[1] + [IGNORE] * (width - len(e[1])) for e in examples])
    return ids, mask, labels


def gkd_trainer():
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    try:
        from trl.experimental.gkd import GKDTrainer
    except ImportError:
        from trl import GKDTrainer
    return GKDTrainer


def reference_parts(student_logits, teacher_logits, labels, setting):
    """(total, soft, ce) of one batch, each divided by its trained positions: position t predicts
    labels[t + 1]; soft = T² · TRL's generalized_jsd_loss(reduction="sum") (forward KL is TRL's
    beta 0, reverse KL its beta 1), ce = the student's cross-entropy sum at T = 1."""
    s, t, lab = student_logits[:, :-1], teacher_logits[:, :-1], labels[:, 1:]
    temperature = setting["temperature"]
    beta = {"forward_kl": 0.0, "reverse_kl": 1.0, "jsd": setting.get("beta")}[setting["loss"]]
    soft = gkd_trainer().generalized_jsd_loss(s, t, labels=lab, beta=beta, temperature=temperature,
                                              reduction="sum") * temperature ** 2
    ce = F.cross_entropy(s.reshape(-1, s.shape[-1]), lab.reshape(-1), ignore_index=IGNORE, reduction="sum")
    n = (lab != IGNORE).sum()
    kd = setting["kd_ratio"]
    return (kd * soft + (1 - kd) * ce) / n, soft / n, ce / n


def teacher_logits(ids, mask):
    from transformers import AutoModelForCausalLM

    teacher = AutoModelForCausalLM.from_pretrained(str(TEACHER), dtype=torch.float32).eval()
    with torch.no_grad():
        return teacher(input_ids=ids, attention_mask=mask).logits


def decays(name):
    """llmtune's AdamW decays every weight but norms and biases (src/train/optimizer.cpp)."""
    return not (name.endswith(".bias") or name.endswith("_bias") or "norm" in name)


def reference_loop(student_dir, batch, setting, *, steps, lr, wd, warmup, lora_init=None):
    """The whole-batch distillation loop in transformers (+ PEFT when lora_init, llmtune's initial
    lora_A by PEFT name): teacher in eval without grad, student in train mode, torch AdamW
    (foreach=False) with llmtune's no-decay rule, warmup + cosine, gradients clipped to norm 1.
    Returns the model, the trainable parameters, the lr of each step and its (total, soft, ce)."""
    from transformers import AutoModelForCausalLM, get_cosine_schedule_with_warmup

    ids, mask, labels = batch
    t_logits = teacher_logits(ids, mask)
    model = AutoModelForCausalLM.from_pretrained(str(student_dir), dtype=torch.float32)
    if lora_init is not None:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear",
                                                 task_type="CAUSAL_LM"))
        params = dict(model.named_parameters())
        assert {k for k, p in params.items() if p.requires_grad} == set(lora_init)
        with torch.no_grad():
            for key, value in lora_init.items():
                params[key].copy_(value)
    named = [(k, p) for k, p in model.named_parameters() if p.requires_grad]
    trainable = [p for _, p in named]
    opt = torch.optim.AdamW([{"params": [p for k, p in named if decays(k)], "weight_decay": wd},
                             {"params": [p for k, p in named if not decays(k)], "weight_decay": 0.0}],
                            lr=lr, foreach=False)
    sched = get_cosine_schedule_with_warmup(opt, warmup, steps)
    model.train()
    lrs, parts = [], []
    for _ in range(steps):
        lrs.append(sched.get_last_lr()[0])
        total, soft, ce = reference_parts(model(input_ids=ids, attention_mask=mask).logits, t_logits, labels, setting)
        total.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        parts.append((total.item(), soft.item(), ce.item()))
    return model, trainable, lrs, parts


def check_summary(summary, setting):
    d = summary["distill"]
    assert d["loss"] == setting["loss"] and d["teacher"] == str(TEACHER) and d["vocab_rows_cut"] == 0
    assert d["temperature"] == pytest.approx(setting["temperature"]) and d["kd_ratio"] == pytest.approx(setting["kd_ratio"])
    assert ("beta" in d) == ("beta" in setting) and d.get("beta") == setting.get("beta")
    assert "teacher_cache" not in d


def check_metrics(steps, setting, n):
    """Every step logs its total and both parts, and the total is their kd_ratio mix."""
    assert [m["step"] for m in steps] == list(range(1, n + 1))
    kd = setting["kd_ratio"]
    for m in steps:
        assert "soft_loss" in m and "ce_loss" in m, m
        assert abs(m["loss"] - (kd * m["soft_loss"] + (1 - kd) * m["ce_loss"])) <= 1e-5 * m["loss"], m


def close(a, b, rel):
    return abs(a - b) <= rel * abs(b)


@pytest.mark.parametrize("method,setting", [("lora", JSD), ("full", FORWARD_KL)], ids=["lora-jsd", "full-forward_kl"])
def test_ten_steps_equal_trl_gkd_loss_in_a_transformers_loop(llmtune, tmp_path, student, method, setting):
    """One batch holding every row (so data order cannot matter), 10 AdamW steps with warmup and a
    cosine schedule: loss, soft_loss and ce_loss equal the reference's to 1e-3 relative at every
    step, and the run learns (total loss down)."""
    rows = chat_rows(8)
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    out = tmp_path / "run"
    steps, warmup, wd = 10, 2, 0.01
    lr = 5e-3 if method == "lora" else 2e-3
    method_args = (["lora.r=4", "lora.alpha=8", "lora.dropout=0", "checkpoint.every_steps=1", "checkpoint.keep=0"]
                   if method == "lora" else ["method=full"])
    r = run_distill(llmtune, student, data, out, steps, f"train.batch_size={len(rows)}", f"train.lr={lr}",
                    f"train.warmup_steps={warmup}", "train.lr_scheduler=cosine", f"train.weight_decay={wd}",
                    "train.max_grad_norm=1.0", *method_args, *distill_args(setting))
    summary = json.loads(r.out)
    check_summary(summary, setting)
    assert summary["method"] == method and summary["steps"] == steps
    ours = metrics(out)
    check_metrics(ours, setting, steps)

    lora_init = None
    if method == "lora":
        # B starts at 0, so step 1 gives A no gradient: step-1's A is the initial A times the
        # decoupled weight decay of step 1 (1 - lr_1 wd; lr_1 is 0 after a warmup), undone here.
        first = load_file(str(out / "checkpoints" / "step-1" / "trainable.safetensors"))
        shrink = 1.0 - ours[0]["lr"] * wd
        lora_init = {}
        for name, t in first.items():
            key = name.replace(".lora_A.weight", ".lora_A.default.weight").replace(".lora_B.weight", ".lora_B.default.weight")
            lora_init[key] = torch.zeros_like(t) if ".lora_B." in key else t / shrink
        assert any(".lora_A." in k for k in lora_init) and any(".lora_B." in k for k in lora_init)
    batch = padded_batch(llmtune, data, len(rows))
    _, trainable, lrs, want = reference_loop(student, batch, setting, steps=steps, lr=lr, wd=wd, warmup=warmup,
                                             lora_init=lora_init)
    assert summary["trainable_parameters"] == sum(p.numel() for p in trainable)
    for i, (m, w_lr, (w_total, w_soft, w_ce)) in enumerate(zip(ours, lrs, want)):
        assert abs(m["lr"] - w_lr) <= 1e-9 + 1e-6 * w_lr, f"step {i + 1}: lr {m['lr']} vs {w_lr}"
        for key, w in (("loss", w_total), ("soft_loss", w_soft), ("ce_loss", w_ce)):
            assert close(m[key], w, 1e-3), f"step {i + 1}: {key} llmtune {m[key]} vs reference {w}"
    assert want[-1][0] < want[0][0] and ours[-1]["loss"] < ours[0]["loss"]
    assert want[-1][1] < want[0][1], "the student moves towards the teacher"


def text_rows():
    """Text rows (every token trained) of very different lengths. The last is {"text": ""}: the
    tokenizer gives only the appended EOS, trained at position 0, which no position predicts after
    the shift, so the row holds no trained position. (A messages row with an empty assistant
    message still trains its end-of-turn token, and a row whose trained tokens are all truncated
    away is dropped by the loader, so this is the way to feed a row with nothing to train.)"""
    return [{"text": "Tiny."},
            {"text": "A sentence of middling length about counting sheep at night."},
            {"text": " ".join(f"word{i} and then the number {i * 7} goes by" for i in range(12))},
            {"text": "Two plus two is four."},
            {"text": ""}]


def step_one(llmtune, student, data, out, batch_size, grad_accum, setting):
    run_distill(llmtune, student, data, out, 1, f"train.batch_size={batch_size}",
                f"train.grad_accum_steps={grad_accum}", *distill_args(setting))
    (m,) = metrics(out)
    return m


def test_step_loss_is_normalised_by_the_trained_positions_of_the_whole_step(llmtune, tmp_path, student):
    """Step 1 (before any update) over the same rows: one row per micro-batch with N accumulation
    steps = one padded batch of N rows = the same batch without the row that has nothing to train
    (1e-5 relative, loss and both parts), and all equal the reference on the padded batch."""
    rows = text_rows()
    n = len(rows)
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    batch = padded_batch(llmtune, data, n)
    lengths = batch[1].sum(1).tolist()
    assert lengths[-1] == 1 and (batch[2][-1, 1:] == IGNORE).all() and max(lengths) > 8 * lengths[0]
    accumulated = step_one(llmtune, student, data, tmp_path / "accum", 1, n, JSD)
    padded = step_one(llmtune, student, data, tmp_path / "padded", n, 1, JSD)
    data_without = write_jsonl(tmp_path / "d4.jsonl", rows[:-1])
    without = step_one(llmtune, student, data_without, tmp_path / "without", n - 1, 1, JSD)
    for key in ("loss", "soft_loss", "ce_loss"):
        assert close(accumulated[key], padded[key], 1e-5), f"{key}: grad_accum {accumulated[key]} vs padded {padded[key]}"
        assert close(without[key], padded[key], 1e-5), f"{key}: without the empty row {without[key]} vs {padded[key]}"
    # The tokens are counted, the step's loss is not a mean over micro-batches or rows.
    assert accumulated["tokens"] == padded["tokens"] == sum(lengths)

    from transformers import AutoModelForCausalLM
    ids, mask, labels = batch
    model = AutoModelForCausalLM.from_pretrained(str(student), dtype=torch.float32)
    with torch.no_grad():
        want = reference_parts(model(input_ids=ids, attention_mask=mask).logits, teacher_logits(ids, mask), labels, JSD)
    for key, w in zip(("loss", "soft_loss", "ce_loss"), want):
        assert close(padded[key], w.item(), 1e-4), f"{key}: llmtune {padded[key]} vs reference {w.item()}"


def test_summary_has_the_distill_block_and_every_step_its_parts(llmtune, tmp_path, student):
    """--json and summary.json carry the distill block (no beta for a KL); every metrics line has
    soft_loss and ce_loss; step 1 with reverse KL equals TRL's beta = 1 on the padded batch."""
    rows = chat_rows(3)
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    out = tmp_path / "run"
    r = run_distill(llmtune, student, data, out, 3, "train.batch_size=3", "train.lr=1e-2", *distill_args(REVERSE_KL))
    summary = json.loads(r.out)
    check_summary(summary, REVERSE_KL)
    check_summary(json.loads((out / "summary.json").read_text()), REVERSE_KL)
    steps = metrics(out)
    check_metrics(steps, REVERSE_KL, 3)
    assert summary["final_loss"] == pytest.approx(steps[-1]["loss"])

    from transformers import AutoModelForCausalLM
    ids, mask, labels = padded_batch(llmtune, data, len(rows))
    model = AutoModelForCausalLM.from_pretrained(str(student), dtype=torch.float32)
    with torch.no_grad():
        want = reference_parts(model(input_ids=ids, attention_mask=mask).logits, teacher_logits(ids, mask), labels,
                               REVERSE_KL)
    for key, w in zip(("loss", "soft_loss", "ce_loss"), want):
        assert close(steps[0][key], w.item(), 1e-4), f"{key}: llmtune {steps[0][key]} vs reference {w.item()}"
