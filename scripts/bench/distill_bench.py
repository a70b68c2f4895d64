"""Benchmark (not a test): knowledge distillation on CPU, `llmtune distill` next to a transformers + PEFT loop
with the same loss, same teacher and student, same examples, same settings, one run; and the cost and gain of
the teacher cache (`--cache-teacher`, then teacher.cache).

Usage: ~/.cache/llmtune/venv/bin/python scripts/bench/distill_bench.py [--layers N | T,S] [--steps N]
           [--batch-size B] [--seq-len T] [--grad-accum G] [--full] [--top-k K] [--keep] ...
       (a copy of the existing build/llmtune, or of $LLMTUNE_BIN). The default is the real depth (32 / 30 layers);
       `--layers 2 --steps 3 --batch-size 2 --seq-len 128` is a 1-2 minute smoke run on 2 cores.

Models (random weights, bf16 on disk, fp32 compute on both sides; written tensor by tensor by qlora_bench's
write_llama): teacher shaped like SmolLM-360M (hidden 960, 32 layers, 15 / 5 heads, intermediate 2560),
student like SmolLM-135M (hidden 576, 30 layers, 9 / 3 heads, intermediate 1536); both vocab 49152, tied
embeddings. The tokenizer is the demo one with its vocabulary padded to 49152 entries (unused pieces that
no merge reaches), so that both sides load a tokenizer as wide as the models' vocabulary.

Data: steps x grad-accum x batch-size chat rows (a question, then an answer of demo sentences sized to fill
most of --seq-len), rendered by the tokenizer's chat template, loss on the answers; one epoch, no packing.
Each side gets the same micro-batches: the token ids and labels come from `llmtune tokenize --row`, the
order from llmtune's seeded per-epoch permutation (finetune_bench.seeded_permutation), each micro-batch
right-padded to the same width (its longest row rounded up to 8, as llmtune's batcher pads).

Runs, each a process of its own, its peak RSS its own (measured_run):
  llmtune online    `llmtune distill`: the teacher runs under no_grad each micro-batch; both models' logits
                    are taken in row chunks (never the full (B, T, V) logits).
  cache build       `llmtune distill --cache-teacher DIR`: the teacher once over the data, top-k log-probs.
  llmtune cache     `llmtune distill teacher.cache=DIR`: the same training reading the cache (soft loss over
                    k + 1 buckets: the top k and the rest; equal to the online loss only when k >= vocab, and
                    below it otherwise: the report shows the teacher's mean mass inside its top k).
  transformers      teacher AutoModelForCausalLM under no_grad + PEFT LoRA student (r, alpha, dropout 0,
                    all-linear; --full: every weight trainable), the forward KL over the full logits as
                    TRL's GKDTrainer.generalized_jsd_loss(beta=0) computes it, i.e. both models' (B, T, V)
                    logits materialised: per micro-batch, at the trained positions,
                    kd * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - kd) * CE(s, label), summed and divided
                    by the step's trained positions; torch AdamW, constant lr, clipping at 1.0. (As in TRL, both
                    models' LM heads run at every position, prompt and padding included; llmtune's at the trained
                    positions only.)
Step 1 runs on the unchanged student (LoRA's B starts at zero; --full: the base weights), so its loss is equal on both sides: the
check that the two loops compute the same thing on the same tokens. tokens/s counts the real tokens of
steps 2.. (step 1 is warm-up), as finetune_bench.py does.
"""
import argparse
import concurrent.futures
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import finetune_bench as fb  # noqa: E402  (BIN, DEMO_DATA, seeded_permutation)
from measured_run import measured_run  # noqa: E402
from qlora_bench import write_llama  # noqa: E402

_COMMON = dict(vocab_size=49152, max_position_embeddings=2048, rms_norm_eps=1e-5, rope_theta=10000.0,
               tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0)
BIN = fb.BIN  # main() points it at a private copy
TEACHER = dict(hidden_size=960, intermediate_size=2560, num_hidden_layers=32, num_attention_heads=15,
               num_key_value_heads=5, **_COMMON)  # SmolLM-360M
STUDENT = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
               num_key_value_heads=3, **_COMMON)  # SmolLM-135M


# ---- models and data ---------------------------------------------------------------------------------

def pad_tokenizer(model_dir, vocab):
    """Pads the BPE vocabulary of model_dir/tokenizer.json to `vocab` entries with pieces no merge makes."""
    path = model_dir / "tokenizer.json"
    tok = json.loads(path.read_text(encoding="utf-8"))
    pieces = tok["model"]["vocab"]
    n = max(max(pieces.values()), max(t["id"] for t in tok["added_tokens"])) + 1
    for i in range(n, vocab):
        pieces[f"<unused_{i}>"] = i
    path.write_text(json.dumps(tok, ensure_ascii=False), encoding="utf-8")


def write_rows(path, n, seq_len, seed):
    """n chat rows: a demo instruction, then an answer of demo sentences (~1.5 tokens a word with the demo
    tokenizer) whose length fills 60-100% of seq_len after the ~35-token prompt."""
    demo = [json.loads(l) for l in fb.DEMO_DATA.read_text(encoding="utf-8").splitlines() if l.strip()]
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(n):
            q = rng.choice(demo)
            words = max(8, int(rng.uniform(0.6, 1.0) * seq_len / 1.5) - 25)
            answer = []
            while sum(len(s.split()) for s in answer) < words:
                answer.append(rng.choice(demo)["output"])
            user = q["instruction"] + (" " + q["input"] if q.get("input") else "")
            f.write(json.dumps({"messages": [{"role": "user", "content": user},
                                             {"role": "assistant", "content": " ".join(answer)}]}) + "\n")


def make_plan(a, student_dir, data, path):
    """Per step, per micro-batch, the (ids, labels) rows as llmtune's batcher orders them (packing off,
    one epoch); token ids and labels from `llmtune tokenize`, so that they are llmtune's own."""
    n = a.steps * a.grad_accum * a.batch_size

    def row(i):
        res = measured_run([BIN, "tokenize", "--model", student_dir, "--data", data, "--row", i + 1,
                            "--max-seq-len", a.seq_len, "--json"], f"llmtune tokenize --row {i + 1}")
        j = json.loads(res["out"])
        return j["input_ids"], j["labels"]

    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        rows = list(pool.map(row, range(n)))
    order = fb.seeded_permutation(n, a.seed, 0)  # epoch 0's order of the (unpacked) rows
    micro = [[rows[i] for i in order[j * a.batch_size:(j + 1) * a.batch_size]] for j in range(n // a.batch_size)]
    steps = [micro[s * a.grad_accum:(s + 1) * a.grad_accum] for s in range(a.steps)]
    plan = {"steps": steps, "step_tokens": [sum(len(ids) for mb in s for ids, _ in mb) for s in steps]}
    path.write_text(json.dumps(plan), encoding="utf-8")
    return plan


# ---- transformers + peft -----------------------------------------------------------------------------

def hf_worker(a):
    """The reference loop, in this (child) process; prints one JSON line."""
    import torch
    import torch.nn.functional as F
    import transformers as tf
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(a.seed)
    plan = json.loads(Path(a.plan).read_text(encoding="utf-8"))
    teacher = tf.AutoModelForCausalLM.from_pretrained(a.teacher_dir, dtype=torch.float32).eval()
    teacher.requires_grad_(False)
    student = tf.AutoModelForCausalLM.from_pretrained(a.student_dir, dtype=torch.float32)
    if not a.full:
        student = get_peft_model(student, LoraConfig(r=a.r, lora_alpha=a.alpha, lora_dropout=0.0,
                                                     target_modules="all-linear", task_type="CAUSAL_LM"))
    student.train()
    trainable = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=a.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    T, kd = a.temperature, a.kd_ratio

    def tensors(rows):  # right-padded to the longest rounded up to 8 (llmtune's batcher), capped at seq_len
        longest = max(len(ids) for ids, _ in rows)
        width = max(longest, min(-(-longest // 8) * 8, a.seq_len))
        ids = torch.tensor([r[0] + [0] * (width - len(r[0])) for r in rows])
        labels = torch.tensor([r[1] + [-100] * (width - len(r[1])) for r in rows])
        mask = torch.tensor([[1] * len(r[0]) + [0] * (width - len(r[0])) for r in rows])
        return ids, labels, mask

    losses, softs, ces, t_start, tokens = [], [], [], None, 0
    for step, micro in enumerate(plan["steps"]):
        batches = [tensors(rows) for rows in micro]
        targets = sum(int((labels[:, 1:] != -100).sum()) for _, labels, _ in batches)
        step_loss = step_soft = step_ce = 0.0
        for ids, labels, mask in batches:
            with torch.no_grad():
                t_logits = teacher(input_ids=ids, attention_mask=mask, use_cache=False).logits  # (B, T, V)
            s_logits = student(input_ids=ids, attention_mask=mask, use_cache=False).logits  # (B, T, V)
            y = labels[:, 1:]
            keep = y != -100
            s, t = s_logits[:, :-1][keep], t_logits[:, :-1][keep]  # (N, V) at the trained positions
            log_q, log_p = F.log_softmax(s / T, -1), F.log_softmax(t / T, -1)
            # TRL generalized_jsd_loss(beta=0): kl_div(student, teacher, log_target) = KL(teacher || student)
            soft = F.kl_div(log_q, log_p, reduction="sum", log_target=True) * T * T
            ce = F.cross_entropy(s, y[keep], reduction="sum")
            loss = (kd * soft + (1 - kd) * ce) / targets
            loss.backward()
            step_loss += loss.item()
            step_soft += soft.item() / targets
            step_ce += ce.item() / targets
            del t_logits, s_logits, s, t, log_q, log_p, loss
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(step_loss)
        softs.append(step_soft)
        ces.append(step_ce)
        if step == 0:
            t_start = time.perf_counter()
        else:
            tokens += plan["step_tokens"][step]
    seconds = time.perf_counter() - t_start
    print(json.dumps({"tokens_per_second": tokens / seconds, "losses": losses, "soft": softs, "ce": ces,
                      "threads": torch.get_num_threads(), "n_trainable": sum(p.numel() for p in trainable)}))


def run_hf(a, teacher, student, plan_path):
    cmd = [sys.executable, __file__, "--hf-worker", "--teacher-dir", teacher, "--student-dir", student, "--plan",
           plan_path, "--r", a.r, "--alpha", a.alpha, "--lr", a.lr, "--seed", a.seed, "--seq-len", a.seq_len,
           "--temperature", a.temperature, "--kd-ratio", a.kd_ratio] + (["--full"] if a.full else [])
    res = measured_run(cmd, "transformers + peft reference")
    out = json.loads(res["out"].strip().splitlines()[-1])
    out.update(peak_rss=res["rss"], wall=res["wall"])
    return out


# ---- llmtune -----------------------------------------------------------------------------------------

def distill_cmd(a, teacher, student, data, out_dir, extra):
    keys = {
        "model.path": student, "teacher.path": teacher, "output": out_dir, "method": "full" if a.full else "lora",
        **({} if a.full else {"lora.r": a.r, "lora.alpha": f"{a.alpha:g}", "lora.dropout": 0.0,
                              "lora.target_modules": "all-linear"}),
        "data.path": data, "data.format": "messages", "data.train_on": "assistant", "data.max_seq_len": a.seq_len,
        "data.packing": "false", "data.val_fraction": 0.0, "train.batch_size": a.batch_size,
        "train.grad_accum_steps": a.grad_accum, "train.max_steps": a.steps, "train.lr": a.lr,
        "train.lr_scheduler": "constant", "train.warmup_steps": 0, "train.weight_decay": 0.0,
        "train.max_grad_norm": 1.0, "train.grad_checkpointing": "false", "eval.every_steps": 0,
        "checkpoint.every_steps": 0, "log.every_steps": 1, "seed": a.seed, "distill.loss": "forward_kl",
        "distill.temperature": a.temperature, "distill.kd_ratio": a.kd_ratio, "distill.top_k": a.top_k, **extra,
    }
    return [BIN, "distill", *[f"{k}={v}" for k, v in keys.items()], "--device", "cpu", "--dtype", "fp32",
            "--json", "--log-level", "warn"]


def run_llmtune(a, teacher, student, data, out_dir, extra, label):
    res = measured_run(distill_cmd(a, teacher, student, data, out_dir, extra), label)
    steps = [json.loads(l) for l in (out_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines() if l.strip()]
    steps = [m for m in steps if "tokens" in m]
    timed = steps[1:]
    seconds = sum(m["tokens"] / m["tokens_per_second"] for m in timed)
    tokens = sum(m["tokens"] for m in timed)
    return {"tokens_per_second": tokens / seconds if seconds > 0 else 0.0, "losses": [m["loss"] for m in steps],
            "soft": [m["soft_loss"] for m in steps], "ce": [m["ce_loss"] for m in steps],
            "step_tokens": [m["tokens"] for m in steps], "peak_rss": res["rss"], "wall": res["wall"]}


def build_cache(a, teacher, student, data, cache_dir, out_dir):
    cmd = distill_cmd(a, teacher, student, data, out_dir, {}) + ["--cache-teacher", cache_dir]
    res = measured_run(cmd, "llmtune distill --cache-teacher")
    summary = json.loads(res["out"])
    size = sum(f.stat().st_size for f in cache_dir.rglob("*") if f.is_file())
    # The teacher's mass inside its top k (1 - exp(rest)), averaged over positions: how much of the full
    # distribution the k + 1 buckets resolve (a random-weights teacher is nearly uniform: little).
    import torch
    from safetensors.torch import load_file
    rest = torch.cat([load_file(str(f))["rest"] for f in sorted(cache_dir.glob("teacher-*.safetensors"))])
    return {"wall": res["wall"], "seconds": summary.get("wall_seconds"), "rows": summary.get("rows"),
            "bytes": size, "peak_rss": res["rss"], "top_mass": float(1 - rest.exp().mean())}


# ---- report ------------------------------------------------------------------------------------------

def gib(n):
    return f"{n / 2**30:.2f} GiB"


def report(a, plan, ours, cached, cache, ref, layers, total):
    print(f"distill on CPU, fp32: teacher SmolLM-360M shape ({layers[0]} of 32 layers), student SmolLM-135M shape "
          f"({layers[1]} of 30 layers), vocab 49152, tied embeddings, random weights")
    print(f"student: {'full fine-tuning' if a.full else f'LoRA r {a.r} alpha {a.alpha:g} all-linear'} "
          f"({ref['n_trainable'] / 1e6:.2f}M trainable); forward KL, T {a.temperature:g}, kd_ratio {a.kd_ratio:g}; "
          f"AdamW lr {a.lr:g}; torch threads {ref['threads']}")
    print(f"run: {a.steps} steps x {a.grad_accum} micro-batches x {a.batch_size} chat rows (max {a.seq_len} tokens), "
          f"{sum(plan['step_tokens'])} real tokens, {sum(plan['step_tokens'][1:])} timed (steps 2..{a.steps})")
    cols = [("llmtune", ours), ("llmtune cache", cached), ("transformers", ref)]
    print(f"{'':<26}" + "".join(f"{n:>15}" for n, _ in cols) + f"{'llmtune/ref':>13}{'cache/ref':>11}")
    for name, key, fmt in (("train tokens/s", "tokens_per_second", lambda v: f"{v:.1f}"),
                           ("peak RSS", "peak_rss", gib)):
        line = f"{name:<26}" + "".join(f"{fmt(s[key]):>15}" for _, s in cols)
        print(line + f"{ours[key] / ref[key]:>13.2f}{cached[key] / ref[key]:>11.2f}")
    for name, key, i in (("loss, step 1", "losses", 0), (f"loss, step {a.steps}", "losses", -1),
                         ("soft (T^2 KL), step 1", "soft", 0), ("CE, step 1", "ce", 0)):
        print(f"{name:<26}" + "".join(f"{s[key][i]:>15.4f}" for _, s in cols))
    print(f"teacher cache (top {min(a.top_k, 49152)}): built in {cache['wall']:.1f} s wall "
          f"({cache['seconds']:.1f} s in llmtune), {cache['rows']} positions, {cache['bytes'] / 2**20:.1f} MiB on disk "
          f"({cache['bytes'] / max(cache['rows'], 1):.0f} bytes a position), peak RSS {gib(cache['peak_rss'])}; "
          f"mean teacher mass in the top k: {100 * cache['top_mass']:.1f}%")
    timed = sum(plan["step_tokens"][1:])
    saved = (timed / ours["tokens_per_second"] - timed / cached["tokens_per_second"]) / (a.steps - 1)  # s a step
    print(f"training from the cache: {cached['tokens_per_second'] / ours['tokens_per_second']:.2f}x the online "
          f"teacher's tokens/s ({saved:+.2f} s a step saved); "
          + (f"the build's wall time is {cache['wall'] / saved:.1f} steps' saving" if saved > 0
             else "the cache saved no time here, so its build never pays back"))
    if ours["step_tokens"] != plan["step_tokens"]:
        print(f"WARNING: llmtune's per-step tokens {ours['step_tokens']} differ from the plan's {plan['step_tokens']}: "
              "the two loops did not see the same examples")
    elif abs(ours["losses"][0] - ref["losses"][0]) > 1e-3 * max(1.0, abs(ref["losses"][0])):
        print(f"WARNING: step-1 losses differ (llmtune {ours['losses'][0]:.5f}, transformers {ref['losses'][0]:.5f})")
    else:
        print("same examples on both sides: per-step token counts equal the plan's, step-1 losses agree")
    print("peak RSS: the whole process (interpreter and libraries included for transformers)")
    print(f"wall time: {total:.0f} s in all")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", default="32,30", help="decoder layers: N for both, or TEACHER,STUDENT (default 32,30)")
    ap.add_argument("--steps", type=int, default=4, help="optimizer steps, the first untimed (default 4)")
    ap.add_argument("--batch-size", type=int, default=4, help="chat rows per micro-batch (default 4)")
    ap.add_argument("--grad-accum", type=int, default=1, help="micro-batches per step (default 1)")
    ap.add_argument("--seq-len", type=int, default=256, help="data.max_seq_len (default 256)")
    ap.add_argument("--full", action="store_true", help="full fine-tuning of the student instead of LoRA")
    ap.add_argument("--r", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=32)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--kd-ratio", type=float, default=0.5)
    ap.add_argument("--top-k", type=int, default=64, help="distill.top_k of the teacher cache (default 64)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--keep", action="store_true", help="keep the work directory (models, data, runs) and print it")
    ap.add_argument("--hf-worker", action="store_true", help=argparse.SUPPRESS)
    for hidden in ("--teacher-dir", "--student-dir", "--plan"):
        ap.add_argument(hidden, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.hf_worker:
        return hf_worker(a)
    if a.steps < 2:
        raise SystemExit("--steps must be at least 2 (the first step is warm-up and not timed)")
    layers = [int(x) for x in a.layers.split(",")]
    layers = layers * 2 if len(layers) == 1 else layers
    if not fb.BIN.exists() or subprocess.run([fb.BIN, "distill", "--help"], capture_output=True).returncode != 0:
        raise SystemExit(f"{fb.BIN} is missing or has no `distill` command (scripts/build.sh builds it)")
    work = Path(tempfile.mkdtemp(prefix="llmtune-distillbench-"))
    t0 = time.perf_counter()
    try:
        global BIN  # every run uses one copy: a rebuild of build/llmtune meanwhile neither changes nor breaks it
        BIN = work / "llmtune"
        shutil.copy2(fb.BIN, BIN)
        teacher, student = work / "teacher", work / "student"
        for d, shape, n in ((teacher, TEACHER, layers[0]), (student, STUDENT, layers[1])):
            write_llama(dict(shape, num_hidden_layers=n), d)
            pad_tokenizer(d, shape["vocab_size"])
        data = work / "train.jsonl"
        write_rows(data, a.steps * a.grad_accum * a.batch_size, a.seq_len, a.seed)
        plan = make_plan(a, student, data, work / "plan.json")
        print(f"[bench] models, data and plan: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        ref = run_hf(a, teacher, student, work / "plan.json")
        print(f"[bench] transformers: {ref['wall']:.0f} s", file=sys.stderr)
        ours = run_llmtune(a, teacher, student, data, work / "run-online", {}, "llmtune distill (online teacher)")
        print(f"[bench] llmtune online: {ours['wall']:.0f} s", file=sys.stderr)
        cache = build_cache(a, teacher, student, data, work / "cache", work / "run-cache-build")
        print(f"[bench] llmtune --cache-teacher: {cache['wall']:.0f} s", file=sys.stderr)
        cached = run_llmtune(a, teacher, student, data, work / "run-cached", {"teacher.cache": work / "cache"},
                             "llmtune distill (teacher.cache)")
        print(f"[bench] llmtune cache: {cached['wall']:.0f} s", file=sys.stderr)
        report(a, plan, ours, cached, cache, ref, layers, time.perf_counter() - t0)
        if a.keep:
            print(f"work directory: {work}")
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
