"""Knowledge-distillation oracles for the tests (called through reference.py's FUNCTIONS): TRL's
GKD generalized JSD (forward KL, reverse KL and the JSD), torchtune's ForwardKLLoss, torch's
cross-entropy, and the top-k teacher cache written out as a k + 1 bucket formula.

Each oracle takes a list of `cases` (dicts of options) so that one Python start serves a test.
Everything is computed in float64 from the fp32 inputs, so the oracles' own rounding is far below
the tests' 1e-5 tolerance; gradients come from torch.autograd."""
import importlib.util
import math
import os

import torch
import torch.nn.functional as F

IGNORE = -100


def _gkd_trainer():
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    try:
        from trl.experimental.gkd import GKDTrainer
    except ImportError:
        from trl import GKDTrainer
    return GKDTrainer


def _trl_beta(divergence, beta):
    """Our divergence as TRL's beta: 0 is forward KL(p_T || q_S), 1 reverse KL(q_S || p_T)."""
    return {"forward_kl": 0.0, "reverse_kl": 1.0, "jsd": float(beta)}[divergence]


def _shifted(student, teacher, labels, vocab):
    """A causal LM's alignment: position t predicts labels[t + 1]; the first `vocab` columns
    (0: all) are the ones the divergence compares."""
    v = vocab or teacher.shape[-1]
    return student[:, :-1], teacher[:, :-1, :v].double(), labels[:, 1:], v


def distill_causal_reference(student, teacher, labels, cases):
    """student (B, T, V_s), teacher (B, T, V_t) fp32 logits, labels (B, T) unshifted with -100.
    Per case (divergence, beta, temperature, kd_ratio, vocab) two outputs:
      values (3,) f64: total, soft, ce where soft = T² · TRL's generalized_jsd_loss (sum) over
        the trained positions and ce = cross_entropy(sum, ignore_index -100) on the full student;
      grads (3, B, T, V_s) f64: d total, d soft, d ce with respect to the student logits."""
    gkd = _gkd_trainer()
    outputs = []
    for case in cases:
        s = student.double().requires_grad_(True)
        s_shift, t_shift, lab, v = _shifted(s, teacher, labels, case.get("vocab", 0))
        temperature = float(case["temperature"])
        soft = gkd.generalized_jsd_loss(
            s_shift[..., :v], t_shift, labels=lab, beta=_trl_beta(case["divergence"], case.get("beta", 0.5)),
            temperature=temperature, reduction="sum") * temperature ** 2
        ce = F.cross_entropy(s_shift.reshape(-1, s.shape[-1]), lab.reshape(-1), reduction="sum",
                             ignore_index=IGNORE)
        kd = float(case["kd_ratio"])
        total = kd * soft + (1 - kd) * ce
        grads = [torch.autograd.grad(x, s, retain_graph=True)[0] for x in (total, soft, ce)]
        outputs += [torch.stack([total, soft, ce]).detach(), torch.stack(grads)]
    return outputs


_TORCHTUNE_KD = None


def _torchtune_kd_losses():
    """torchtune/modules/loss/kd_losses.py loaded on its own: the package's __init__ imports
    torchao, which does not work with the torch we link."""
    global _TORCHTUNE_KD
    if _TORCHTUNE_KD is None:
        root = importlib.util.find_spec("torchtune").submodule_search_locations[0]
        path = os.path.join(root, "modules", "loss", "kd_losses.py")
        spec = importlib.util.spec_from_file_location("torchtune_kd_losses", path)
        _TORCHTUNE_KD = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(_TORCHTUNE_KD)
    return _TORCHTUNE_KD


def torchtune_forward_kl_reference(student, teacher, labels):
    """torchtune's ForwardKLLoss(normalize=False) on the shifted rows at T = 1: −Σ p_T log q_S, the
    forward KL without the teacher's entropy (so with the same gradient). Outputs:
      values (2,) f64: torchtune's loss, the teacher's entropy −Σ p log p over the trained rows;
      grad (B, T, V) fp32: d loss / d student logits (torchtune computes in fp32)."""
    loss_fn = _torchtune_kd_losses().ForwardKLLoss(ignore_index=IGNORE)
    s = student.float().requires_grad_(True)
    s_shift, t_shift, lab, v = _shifted(s, teacher, labels, 0)
    loss = loss_fn(s_shift.reshape(-1, v), t_shift.float().reshape(-1, v), lab.reshape(-1), normalize=False)
    (grad,) = torch.autograd.grad(loss, s)
    t_logp = F.log_softmax(t_shift, dim=-1)
    entropy = -(t_logp.exp() * t_logp).sum(-1)[lab != IGNORE].sum()
    return [torch.stack([loss.detach().double(), entropy]), grad]


def _kl(a_log, b_log):
    """Σ a (log a − log b) over the last dimension; every bucket here has a > 0."""
    return (a_log.exp() * (a_log - b_log)).sum(-1)


def _divergence(p_log, q_log, divergence, beta):
    """The per-row divergence between teacher p and student q, given as log-probabilities."""
    beta = _trl_beta(divergence, beta)
    if beta == 0:
        return _kl(p_log, q_log)
    if beta == 1:
        return _kl(q_log, p_log)
    m_log = torch.logsumexp(torch.stack([p_log + math.log(beta), q_log + math.log1p(-beta)]), dim=0)
    return beta * _kl(p_log, m_log) + (1 - beta) * _kl(q_log, m_log)


def _rest_logprob(logp, ids):
    """log of the probability mass outside `ids` in each row: logsumexp of the others."""
    return logp.scatter(-1, ids, float("-inf")).logsumexp(-1)


def _teacher_topk(teacher, k, temperature, vocab):
    """The top-k cache of teacher rows (N, V) at temperature T over the first `vocab` columns:
    topk_logprobs (N, k) fp32, topk_ids (N, k) int64 (descending), rest_logprob (N,) fp32."""
    v = vocab or teacher.shape[-1]
    logp = F.log_softmax(teacher[:, :v].double() / temperature, dim=-1)
    top, ids = logp.topk(k, dim=-1)
    return [top.float(), ids, _rest_logprob(logp, ids).float()]


def distill_topk_reference(student, teacher, k, temperature, cases, vocab=0):
    """The teacher's top-k cache (as _teacher_topk) and the soft loss against it, over k + 1
    buckets: the teacher's cached log-probs and log rest mass (taken from the fp32 cache); the
    student's log-probs log_softmax(s[:, :vocab] / T) at the same ids and the log of its mass
    outside them. student (N, V_s), teacher (N, V) fp32. Outputs: the cache's three tensors, then
    per case (divergence, beta): soft (1,) f64 = T² Σ_rows D(p, q), grad (N, V_s) f64."""
    cache = _teacher_topk(teacher, k, temperature, vocab)
    topk_logprobs, topk_ids, rest_logprob = cache
    p_log = torch.cat([topk_logprobs.double(), rest_logprob.double()[:, None]], dim=-1)
    v = vocab or student.shape[-1]
    outputs = list(cache)
    for case in cases:
        s = student.double().requires_grad_(True)
        q_all = F.log_softmax(s[:, :v] / temperature, dim=-1)
        q_log = torch.cat([q_all.gather(-1, topk_ids), _rest_logprob(q_all, topk_ids)[:, None]], dim=-1)
        soft = _divergence(p_log, q_log, case["divergence"], case.get("beta", 0.5)).sum() * temperature ** 2
        (grad,) = torch.autograd.grad(soft, s)
        outputs += [soft.detach().reshape(1), grad]
    return outputs


FUNCTIONS = {f.__name__: f for f in (distill_causal_reference, torchtune_forward_kl_reference,
                                     distill_topk_reference)}
