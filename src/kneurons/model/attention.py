"""Fused self-attention for fair-esm's ESM-2 layers.

fair-esm's `MultiheadAttention` computes attention with explicit `bmm`/softmax (softmax in
float32) and, because `TransformerLayer` asks for them, the head-averaged attention weights.
`use_fused_attention(model, True)` swaps each layer's `self_attn.forward` for one that runs
the same projections (the same `q_proj`/`k_proj`/`v_proj`/`out_proj` modules, so forward
hooks still fire), the same rotary embedding, and
`torch.nn.functional.scaled_dot_product_attention` with the key padding mask. It returns no
attention weights; calls that need them (`need_head_weights`, `before_softmax`, incremental
decoding, an explicit `attn_mask`) fall back to fair-esm's own forward.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from esm.multihead_attention import MultiheadAttention
from torch import nn

_FLAG = "_kneurons_fused"


def _fused_forward(
    self: MultiheadAttention,
    query,
    key=None,
    value=None,
    key_padding_mask=None,
    incremental_state=None,
    need_weights: bool = True,
    static_kv: bool = False,
    attn_mask=None,
    before_softmax: bool = False,
    need_head_weights: bool = False,
):
    if (
        need_head_weights
        or before_softmax
        or incremental_state is not None
        or static_kv
        or attn_mask is not None
        or key is None
        or value is None
        or key.shape != query.shape
        or value.shape != query.shape
        or self.bias_k is not None
        or self.add_zero_attn
    ):
        return MultiheadAttention.forward(
            self,
            query,
            key,
            value,
            key_padding_mask=key_padding_mask,
            incremental_state=incremental_state,
            need_weights=need_weights,
            static_kv=static_kv,
            attn_mask=attn_mask,
            before_softmax=before_softmax,
            need_head_weights=need_head_weights,
        )
    tgt_len, bsz, embed_dim = query.shape
    heads, head_dim = self.num_heads, self.head_dim
    q = self.q_proj(query)
    k = self.k_proj(key)
    v = self.v_proj(value)

    def split(t):  # (T, B, E) -> (B * H, T, D), as fair-esm lays it out for the rotary embedding
        return t.reshape(tgt_len, bsz * heads, head_dim).transpose(0, 1)

    q, k, v = split(q), split(k), split(v)
    if self.rot_emb is not None:
        q, k = self.rot_emb(q, k)
    q, k, v = (t.reshape(bsz, heads, tgt_len, head_dim) for t in (q, k, v))
    mask = None
    if key_padding_mask is not None and key_padding_mask.dim() != 0:
        mask = ~key_padding_mask.to(torch.bool)[:, None, None, :]  # True = attend
    attn = F.scaled_dot_product_attention(
        q,
        k,
        v,
        attn_mask=mask,
        dropout_p=self.dropout if self.training else 0.0,
        scale=self.scaling,
    )  # (B, H, T, D)
    attn = attn.permute(2, 0, 1, 3).reshape(tgt_len, bsz, embed_dim)
    return self.out_proj(attn), None


def attention_modules(model: nn.Module) -> list[MultiheadAttention]:
    """Every fair-esm MultiheadAttention inside `model`."""
    return [m for m in model.modules() if isinstance(m, MultiheadAttention)]


def use_fused_attention(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Switch every fair-esm `MultiheadAttention` in `model` to (or back from) the fused
    forward. Module names and parameters are unchanged. Returns `model`."""
    for module in attention_modules(model):
        if enabled:
            module.forward = types.MethodType(_fused_forward, module)
            setattr(module, _FLAG, True)
        elif getattr(module, _FLAG, False):
            del module.forward
            delattr(module, _FLAG)
    return model
