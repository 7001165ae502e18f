"""Attention with an additive bias (Focal's relative-position biases and masks), on the kernel that
computes it fused on this device: torch_npu's `npu_fusion_attention` on Ascend NPUs (their
`scaled_dot_product_attention` fuses only with a bool mask or none, and with a float mask falls back to
the math path, fp32 scores even under AMP), `scaled_dot_product_attention` everywhere else.

On the CPU, `scaled_dot_product_attention` with a bias that needs a gradient runs its unfused math path,
which adds a "safe softmax" (isneginf / all / where passes) and a separate mask addition; there the same
sums as explicit matmuls (`matmul`, in-place bias addition, softmax, `matmul`) can be faster. Which
of the two routes is, is measured per shape, inference and training apart (`van_focal.models._routes`, op
`biased_attention`; training routes timed forward and backward)."""
from collections import Counter
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from timm.models._features_fx import register_notrace_function

from ..core import device as devices
from . import _routes as routes

# npu_fusion_attention's documented limits (torch_npu 2.14.0, torch_npu/_op_plugin_docs.py): query heads
# N 1..256, head dim D 1..768, sequence lengths 1..1M, batch 1..2M; float16 / bfloat16 / float32.
FUSED_LIMITS = dict(heads=256, head_dim=768, seq_len=1 << 20, batch=2 << 20)
FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

# Calls per kernel name since the last clear(), for the doctor (not counted while torch.compile traces).
KERNELS_USED = Counter()


def fused_limits_broken(q: torch.Tensor, k: torch.Tensor) -> Optional[str]:
    """Why (B, N, L, D) queries and (B, N, S, D) keys are outside npu_fusion_attention's documented limits."""
    B, N, L, D = q.shape
    checks = ((N, 'heads', 'heads x windows'), (D, 'head_dim', 'head dim'), (max(L, k.shape[2]), 'seq_len',
              'sequence length'), (B, 'batch', 'batch'))
    for value, key, name in checks:
        if not 1 <= value <= FUSED_LIMITS[key]:
            return f'{name} {value} is outside 1..{FUSED_LIMITS[key]}'
    if q.dtype not in FUSED_DTYPES:
        return f'dtype {q.dtype}'
    return None


def fused_biased_attention(op: Callable, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                           dropout_p: float, scale: float) -> torch.Tensor:
    """softmax(scale * q k^T + bias) v through `op` = npu_fusion_attention.

    Its documented formula is softmax(scale * (pse + q k^T)) with dropout keep_prob
    (torch_npu/_op_plugin_docs.py; npu_fusion_attention_v2 calls this order pse_type=1, its default), so the
    bias enters as pse = bias / scale. pse takes the 1NSS form (one bias for the whole batch) and must have
    the inputs' dtype; the layout is BNSD with head_num = N.
    """
    pse = (bias.float() / scale).to(q.dtype)
    return op(q, k, v, q.shape[1], 'BNSD', pse=pse, scale=scale, keep_prob=1. - dropout_p)[0]


@register_notrace_function
def attention_with_bias(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, dropout_p: float,
                        scale: float) -> torch.Tensor:
    """softmax(scale * q k^T + bias) v for (B, N, L, D) queries, (B, N, S, D) keys and values, and a
    (1, N, L, S) additive bias in the queries' dtype, on the device's fused kernel where one takes the bias."""
    if not torch.jit.is_scripting() and not torch.compiler.is_compiling():
        # npu_fusion_attention does not support graph mode (its documentation): eager only
        return _eager_attention(q, k, v, bias, dropout_p, scale)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p, scale=scale)


def _eager_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, dropout_p: float,
                     scale: float) -> torch.Tensor:
    op = devices.fused_attention_op(q.device)
    if op is not None:
        why_not = fused_limits_broken(q, k)
        if why_not is None:
            KERNELS_USED['npu_fusion_attention'] += 1
            return fused_biased_attention(op, q, k, v, bias, dropout_p, scale)
        devices.say_once(f'Attention: {why_not}, beyond npu_fusion_attention\'s documented limits; '
                         'using scaled_dot_product_attention for these layers.')
        return _sdpa(q, k, v, bias, dropout_p, scale)
    # matmuls: float32 only (SDPA accumulates lower precisions in float32), and without dropout (the two
    # draw different masks, and timing would consume random numbers)
    if routes.plain_op(q) or q.dtype != torch.float32 or dropout_p > 0:
        return _sdpa(q, k, v, bias, dropout_p, scale)
    return routes.apply('biased_attention', {
        'sdpa': lambda q, k, v, bias: _sdpa(q, k, v, bias, 0., scale),
        'matmuls': lambda q, k, v, bias: _matmuls(q, k, v, bias, scale),
    }, q, k, v, bias)


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, dropout_p: float,
          scale: float) -> torch.Tensor:
    KERNELS_USED['scaled_dot_product_attention'] += 1
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p, scale=scale)


def _matmuls(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax((scale * q) k^T + bias) v as matmul, in-place bias addition (broadcast over the batch),
    softmax and matmul. No safe-softmax passes: Focal's masks are finite (-100), no row is all -inf."""
    scores = torch.matmul(q * scale, k.transpose(-2, -1)).add_(bias)
    KERNELS_USED['matmuls'] += 1
    return torch.matmul(scores.softmax(-1), v)
