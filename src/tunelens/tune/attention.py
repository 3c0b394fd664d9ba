"""Attention under CPU bf16 autocast: short sequences in fp32, where torch's CPU flash kernel is faster.

Why: autocast sends `scaled_dot_product_attention` to bf16, and on a CPU torch's flash-attention kernel is slower
in bf16 than in fp32 for short queries. Measured on an AMX Xeon (2 threads, torch 2.13, forward + backward, 9
query heads over 3 KV heads of 64, about 1000 tokens a batch): 6.1 ms fp32 against 14.2 ms bf16 at 128 tokens,
7.9 against 8.5 at 192, and bf16 ahead from 256 on (10.5 against 9.9; 31.9 against 18.3 at 1024). The demo
task's examples are ~120 tokens: the bf16 kernel cost the tune bench's LoRA step about a tenth of its time.

So under CPU bf16 autocast, `cpu_bf16_sdpa` runs transformers' own SDPA attention in fp32 (autocast off, the
operands converted) when the query is at most FP32_MAX_QUERY tokens long, and as autocast would otherwise. Off
autocast, on a GPU, or for longer queries it is transformers' function unchanged; the memory stays the flash
kernel's (no n² score matrix is kept, unlike eager attention). fp32 attention is also the more exact of the two.
"""

from __future__ import annotations

import contextlib

import torch

NAME = "tunelens_cpu_bf16_sdpa"
FP32_MAX_QUERY = 192  # the crossover measured above: at most this many query tokens run in fp32


def cpu_bf16_sdpa(module, query, key, value, attention_mask, *args, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if (query.device.type == "cpu" and torch.is_autocast_enabled("cpu") and query.shape[2] <= FP32_MAX_QUERY):
        f = torch.float32
        with torch.autocast("cpu", enabled=False):
            return sdpa_attention_forward(module, query.to(f), key.to(f), value.to(f), attention_mask, *args,
                                          **kwargs)
    return sdpa_attention_forward(module, query, key, value, attention_mask, *args, **kwargs)


def _register() -> None:
    """The attention function and its mask: transformers builds no mask at all (padding attended to) for an
    attention name its mask registry does not know."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    if NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(NAME, cpu_bf16_sdpa)
    if NAME not in AttentionMaskInterface._global_mapping:
        AttentionMaskInterface.register(NAME, sdpa_mask)


@contextlib.contextmanager
def bf16_cpu_attention(model, precision: str):
    """While training in bf16 on a CPU, a model on transformers' SDPA attention uses `cpu_bf16_sdpa`; the setting is
    put back afterwards (a saved config never names it). Any other model, precision or device: unchanged."""
    config = getattr(model, "config", None)
    device = getattr(model, "device", torch.device("cpu"))
    if precision != "bf16" or torch.device(device).type != "cpu" or getattr(config, "_attn_implementation",
                                                                              None) != "sdpa":
        yield False
        return
    _register()
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        inner.set_attn_implementation(NAME)
    except (ValueError, AttributeError, NotImplementedError):  # an architecture without the attention interface
        yield False
        return
    try:
        yield True
    finally:
        inner.set_attn_implementation("sdpa")
