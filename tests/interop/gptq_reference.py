"""An independent GPTQ reference for the C++ parity tests, written from the published algorithm
(Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
Transformers", Algorithm 1, with the group / act-order / static-groups conventions of the
IST-DASLab reference implementation): float32 torch throughout, one column at a time.
"""
import torch


def _params(x, bits, sym):
    """Min/max scale and zero point of each row of x (rows, cols)."""
    maxq = 2 ** bits - 1
    zero_t = torch.zeros(x.shape[0])
    lo = torch.minimum(x.min(dim=1).values, zero_t)
    hi = torch.maximum(x.max(dim=1).values, zero_t)
    if sym:
        hi = torch.maximum(lo.abs(), hi)
        lo = torch.where(lo < 0, -hi, lo)
    empty = (lo == 0) & (hi == 0)
    lo = torch.where(empty, torch.full_like(lo, -1.0), lo)
    hi = torch.where(empty, torch.full_like(hi, 1.0), hi)
    scale = (hi - lo) / maxq
    zero = torch.full_like(scale, (maxq + 1) / 2) if sym else torch.round(-lo / scale)
    return scale, zero


def _codes(col, scale, zero, bits):
    return torch.clamp(torch.round(col / scale) + zero, 0, 2 ** bits - 1)


def gptq_reference(weight, hessian, bits, group_size, sym, act_order, damp=0.01, block_size=128):
    """Returns codes (O, I) int32 in the original column order, scales (O, G), zeros (O, G) int32."""
    W = weight.clone().float()
    H = hessian.clone().float()
    rows, cols = W.shape
    groups = 1 if group_size == -1 else (cols + group_size - 1) // group_size
    scales = torch.zeros(rows, groups)
    zeros = torch.zeros(rows, groups)
    if group_size == -1:
        s, z = _params(W, bits, sym)
        scales[:, 0], zeros[:, 0] = s, z
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    fixed = []
    perm = None
    if act_order:
        if group_size != -1:
            for g in range(groups):
                s, z = _params(W[:, g * group_size:(g + 1) * group_size], bits, sym)
                fixed.append((s, z))
                scales[:, g], zeros[:, g] = s, z
        perm = torch.argsort(torch.diag(H), descending=True, stable=True)
        W = W[:, perm]
        H = H[perm][:, perm]
    H = H + damp * torch.mean(torch.diag(H)) * torch.eye(cols)
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    Q = torch.zeros_like(W)
    s = z = None
    if group_size == -1:
        s, z = scales[:, 0], zeros[:, 0]
    for start in range(0, cols, block_size):
        end = min(start + block_size, cols)
        block = W[:, start:end].clone()
        errors = torch.zeros_like(block)
        for j in range(end - start):
            c = start + j
            if group_size != -1:
                if act_order:
                    s, z = fixed[int(perm[c]) // group_size]
                elif c % group_size == 0:
                    s, z = _params(W[:, c:c + group_size], bits, sym)
                    scales[:, c // group_size], zeros[:, c // group_size] = s, z
            x = block[:, j]
            q = _codes(x, s, z, bits)
            Q[:, c] = q
            e = (x - s * (q - z)) / U[c, c]
            block[:, j:] -= e.unsqueeze(1) @ U[c, c:end].unsqueeze(0)
            errors[:, j] = e
        W[:, end:] -= errors @ U[start:end, end:]
    if perm is not None:
        Q = Q[:, torch.argsort(perm)]
    return Q.to(torch.int32), scales, zeros.to(torch.int32)


def rtn_reference(weight, bits, group_size, sym):
    W = weight.float()
    rows, cols = W.shape
    width = cols if group_size == -1 else group_size
    codes, scales, zeros = [], [], []
    for c0 in range(0, cols, width):
        s, z = _params(W[:, c0:c0 + width], bits, sym)
        codes.append(_codes(W[:, c0:c0 + width], s.unsqueeze(1), z.unsqueeze(1), bits))
        scales.append(s)
        zeros.append(z)
    return torch.cat(codes, 1).to(torch.int32), torch.stack(scales, 1), torch.stack(zeros, 1).to(torch.int32)


def _dequantize(codes, scales, zeros, group_size):
    cols = codes.shape[1]
    g = torch.zeros(cols, dtype=torch.long) if group_size == -1 else torch.arange(cols) // group_size
    return scales[:, g] * (codes.float() - zeros[:, g].float())


def gptq_model_reference(ids, model_dir, modules, bits, group_size, sym, act_order, damp=0.01):
    """GPTQ over the transformers model layer by layer (prune_reference's sequential pass: each
    quantized layer's outputs feed the next); per decoder layer and module, the codes, scales and
    zero points."""
    from prune_reference import layerwise_reference

    def transform(name, W, sq_norm, hessian):
        codes, scales, zeros = gptq_reference(W, hessian, bits, group_size, sym, act_order, damp)
        return _dequantize(codes, scales, zeros, group_size), [codes, scales, zeros]

    return layerwise_reference(ids, model_dir, modules, transform)


FUNCTIONS = {f.__name__: f for f in (gptq_reference, rtn_reference, gptq_model_reference)}
