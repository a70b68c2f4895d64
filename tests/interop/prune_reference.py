"""Pruning oracles for the tests (called through reference.py's FUNCTIONS): independent Python
references of magnitude, Wanda, SparseGPT and the structured importance scores."""
import torch


# Pruning references, written from the papers' descriptions: Wanda (Sun et al. 2023, "A Simple and
# Effective Pruning Approach for Large Language Models") and SparseGPT (Frantar & Alistarh 2023),
# run on a transformers model layer by layer as their authors' code does: each decoder layer's
# linears see the calibration inputs of the layer as it was, are pruned together, and the pruned
# layer's outputs become the next layer's inputs. Prune counts: exactly int(n * sparsity) of each
# comparison group (a row, the whole matrix, or a SparseGPT block), the N:M groups M - N.


def _lowest_mask(scores, k):
    """True at the k lowest entries of each row of scores (ties to the lower column)."""
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if k > 0:
        order = torch.sort(scores, dim=-1, stable=True).indices
        mask.scatter_(-1, order[..., :k], True)
    return mask


def _score_mask(scores, sparsity, n, m, scope):
    rows, cols = scores.shape
    if m:
        groups = scores.reshape(rows, cols // m, m)
        return _lowest_mask(groups, m - n).reshape(rows, cols)
    if scope == "layer":
        return _lowest_mask(scores.reshape(1, -1), int(scores.numel() * sparsity)).reshape(rows, cols)
    return _lowest_mask(scores, int(cols * sparsity))


def sparsegpt_reference(weight, hessian, sparsity=0.5, n=0, m=0, damp=0.01, block_size=128):
    """SparseGPT's OBS reconstruction of one weight (out, in) from its Hessian (in, in), fp32."""
    W = weight.clone().float()
    H = hessian.clone().float()
    cols = W.shape[1]
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H += damp * torch.mean(torch.diag(H)) * torch.eye(cols)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    for start in range(0, cols, block_size):
        end = min(start + block_size, cols)
        W1 = W[:, start:end].clone()
        Hb = Hinv[start:end, start:end]
        d = torch.diag(Hb)
        Q1 = torch.zeros_like(W1)
        E1 = torch.zeros_like(W1)
        if m:
            mask = torch.zeros_like(W1, dtype=torch.bool)
        else:
            score = W1 ** 2 / d.reshape(1, -1) ** 2
            mask = _lowest_mask(score.reshape(1, -1), int(score.numel() * sparsity)).reshape(score.shape)
        for j in range(end - start):
            if m and j % m == 0:
                score = W1[:, j:j + m] ** 2 / d[j:j + m].reshape(1, -1) ** 2
                mask[:, j:j + m] |= _lowest_mask(score, m - n)
            w = W1[:, j]
            q = torch.where(mask[:, j], torch.zeros_like(w), w)
            Q1[:, j] = q
            err = (w - q) / d[j]
            W1[:, j:] -= err.unsqueeze(1) @ Hb[j, j:].unsqueeze(0)
            E1[:, j] = err
        W[:, start:end] = Q1
        W[:, end:] -= E1 @ Hinv[start:end, end:]
    return [W]


def layerwise_reference(ids, model_dir, modules, transform):
    """The sequential layer-by-layer pass of Wanda, SparseGPT and GPTQ on the transformers model (fp32)
    and calibration ids (N, T): each decoder layer's inputs captured once, its linears' statistics
    (||X_j||^2 and 2/samples * X^T X, samples counting sequences, as the authors accumulate them)
    recorded while it runs, each weight replaced by transform(name, W, sq_norms, hessian) -> (new W,
    [outputs]), and the updated layer's outputs fed to the next. Returns the outputs in order."""
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    layers = model.model.layers
    names = modules.split(",")
    captured = {}

    def capture(i):
        def hook(module, args, kwargs):
            captured[i] = (args, dict(kwargs))
        return hook

    handles = [layer.register_forward_pre_hook(capture(i), with_kwargs=True) for i, layer in enumerate(layers)]
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)
    for h in handles:
        h.remove()

    def run(layer, i, hidden):
        args, kwargs = captured[i]
        kwargs = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        out = layer(hidden, *args[1:], **kwargs)
        return out[0] if isinstance(out, tuple) else out

    args0, kwargs0 = captured[0]
    hidden = args0[0] if args0 else kwargs0["hidden_states"]
    outputs = []
    with torch.no_grad():
        for i, layer in enumerate(layers):
            linears = {name: layer.get_submodule(name) for name in names}
            sq_norms, hessians, seen = {}, {}, {}

            def record(name):
                def hook(module, inputs, output):
                    x = inputs[0].reshape(-1, inputs[0].shape[-1]).float()
                    batch = inputs[0].shape[0] if inputs[0].dim() == 3 else 1
                    before = seen.get(name, 0)
                    seen[name] = before + batch
                    scale = before / seen[name]
                    sq_norms[name] = sq_norms.get(name, 0) * scale + (x ** 2).sum(0) / seen[name]
                    xs = (2.0 / seen[name]) ** 0.5 * x
                    hessians[name] = hessians.get(name, 0) * scale + xs.t() @ xs
                return hook

            handles = [mod.register_forward_hook(record(name)) for name, mod in linears.items()]
            run(layer, i, hidden)
            for h in handles:
                h.remove()
            for name in names:
                mod = linears[name]
                new, out = transform(name, mod.weight.data.float(), sq_norms[name], hessians[name])
                mod.weight.data.copy_(new)
                outputs += out
            hidden = run(layer, i, hidden)
    return outputs


def prune_reference(ids, model_dir, method, modules, sparsity=0.5, n=0, m=0, scope="row", damp=0.01, block_size=128):
    """Prunes the transformers model (fp32) on calibration ids (N, T); returns, for each decoder
    layer and each module path in `modules` (",".join of "self_attn.q_proj", ...), the pruned weight
    and the scores the mask was chosen by (|W| or |W|*||X_j||; SparseGPT: its pruned weight twice)."""
    def transform(name, W, sq_norm, hessian):
        if method == "sparsegpt":
            pruned = sparsegpt_reference(W, hessian, sparsity, n, m, damp, block_size)[0]
            return pruned, [pruned.clone(), pruned]
        scores = W.abs() * (torch.sqrt(sq_norm).reshape(1, -1) if method == "wanda" else 1.0)
        pruned = W.masked_fill(_score_mask(scores, sparsity, n, m, scope), 0.0)
        return pruned, [pruned.clone(), scores]

    return layerwise_reference(ids, model_dir, modules, transform)


# Structured pruning references, from the papers' descriptions, with transformers forward hooks on
# one pass of the unpruned model: ShortGPT's Block Influence (Men et al. 2024: 1 - cos(x_in, x_out)
# of a layer, averaged over every token), Gromov et al. 2024's angular distance between the inputs
# of layers l and l+n (arccos of the cosine / pi, at each sequence's final token, averaged), and
# Minitron's activation importance (Muralidharan et al. 2024) of attention heads (the head's
# attention output, o_proj's input) and MLP neurons (down_proj's input), aggregated as the L2 norm
# over a sequence's tokens, then the mean over the batch.


def structured_reference(ids, model_dir, block=1, heads=0, kv_heads=0, intermediate=0):
    """Scores and choices for calibration ids (N, T): block influence (L,), angular distance of
    blocks of `block` layers (L - block + 1,), head scores (L, Hq), channel scores (L, I), then the
    layers removed by the lowest BI (block of them, int64), the first layer of the best angular
    block (int64 [1]); and with heads/kv_heads/intermediate (new counts) the kept query heads
    (L, heads), kept KV heads (L, kv_heads) and kept channels (L, intermediate), int64 ascending:
    KV groups by the sum of their heads' scores, the best heads of each kept group."""
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    cfg = model.config
    n_heads, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
    seen = {}

    def keep_input(key):
        def hook(module, args, kwargs):
            seen[key] = (args[0] if args else kwargs["hidden_states"]).detach().float()
        return hook

    def keep_output(key):
        def hook(module, args, kwargs, output):
            seen[key] = (output[0] if isinstance(output, tuple) else output).detach().float()
        return hook

    handles = []
    for i, layer in enumerate(model.model.layers):
        handles.append(layer.register_forward_pre_hook(keep_input(("in", i)), with_kwargs=True))
        handles.append(layer.register_forward_hook(keep_output(("out", i)), with_kwargs=True))
        handles.append(layer.self_attn.o_proj.register_forward_pre_hook(keep_input(("o", i)), with_kwargs=True))
        handles.append(layer.mlp.down_proj.register_forward_pre_hook(keep_input(("down", i)), with_kwargs=True))
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)
    for h in handles:
        h.remove()
    L = len(model.model.layers)
    cos = torch.nn.functional.cosine_similarity
    bi = torch.stack([1 - cos(seen[("in", i)].double(), seen[("out", i)].double(), dim=-1).mean() for i in range(L)])
    finals = [seen[("in", i)][:, -1].double() for i in range(L)] + [seen[("out", L - 1)][:, -1].double()]
    angular = torch.stack([(torch.arccos(cos(finals[l], finals[l + block], dim=-1).clamp(-1, 1)) / torch.pi).mean()
                           for l in range(L - block + 1)])
    n = ids.shape[0]
    head_scores = torch.stack([seen[("o", i)].reshape(n, ids.shape[1], n_heads, head_dim).pow(2).sum(dim=(1, 3)).sqrt().mean(0)
                               for i in range(L)])
    channel_scores = torch.stack([seen[("down", i)].pow(2).sum(1).sqrt().mean(0) for i in range(L)])
    removed = torch.sort(torch.argsort(bi, stable=True)[:block]).values
    out = [bi, angular, head_scores, channel_scores, removed, torch.argmin(angular).reshape(1)]
    if heads:
        group, per_group = n_heads // n_kv, heads // kv_heads
        kept_q, kept_kv = [], []
        for i in range(L):
            groups = torch.sort(torch.topk(head_scores[i].reshape(n_kv, group).sum(1), kv_heads).indices).values
            kept_kv.append(groups)
            kept_q.append(torch.cat([g * group + torch.sort(torch.topk(head_scores[i, g * group:(g + 1) * group], per_group).indices).values
                                     for g in groups.tolist()]))
        out += [torch.stack(kept_q), torch.stack(kept_kv)]
    if intermediate:
        out.append(torch.stack([torch.sort(torch.topk(channel_scores[i], intermediate).indices).values for i in range(L)]))
    return out

