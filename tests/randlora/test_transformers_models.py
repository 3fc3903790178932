"""Adapters on transformers Llama-, BERT- and ViT-family models, in fp32, bf16 and fp16 base weights."""
from __future__ import annotations

import pytest
import torch
import transformers

import randlora

from .helpers import randomize_


def tiny_llama():
    cfg = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=88, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64,
    )
    return transformers.LlamaForCausalLM(cfg), {"input_ids": torch.randint(0, 64, (2, 7))}, randlora.LLAMA_PROJECTIONS


def tiny_bert():
    cfg = transformers.BertConfig(
        vocab_size=64, hidden_size=32, intermediate_size=72, num_hidden_layers=2, num_attention_heads=4, num_labels=3
    )
    targets = ("query", "key", "value", r".*attention\.output\.dense", r".*intermediate\.dense", r".*layer\.\d+\.output\.dense")
    return transformers.BertForSequenceClassification(cfg), {"input_ids": torch.randint(0, 64, (2, 7))}, targets


def tiny_vit():
    cfg = transformers.ViTConfig(
        image_size=16, patch_size=4, num_channels=1, hidden_size=32, intermediate_size=72, num_hidden_layers=2,
        num_attention_heads=4, num_labels=5,
    )
    # ViT's module names differ between transformers releases (query/key/value vs q_proj/k_proj/v_proj)
    targets = ("all-linear",)
    return transformers.ViTForImageClassification(cfg), {"pixel_values": torch.randn(2, 1, 16, 16)}, targets


MODELS = {"llama": tiny_llama, "bert": tiny_bert, "vit": tiny_vit}
CONFIGS = {
    "randlora": lambda t, h: randlora.RandLoRAConfig(r=8, target_modules=t, trainable_modules=h),
    "randlora-sparse": lambda t, h: randlora.RandLoRAConfig(
        r=8, impl="sparse", basis="very_sparse", target_modules=t, trainable_modules=h
    ),
    "lora": lambda t, h: randlora.LoRAConfig(r=4, target_modules=t, trainable_modules=h),
}


def _logits(model, inputs):
    return model(**inputs).logits


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("config_name", list(CONFIGS))
@pytest.mark.parametrize("model_name", list(MODELS))
def test_adapter_trains_on_transformers_model(model_name, config_name, dtype):
    torch.manual_seed(0)
    model, inputs, targets = MODELS[model_name]()
    model = model.to(dtype)
    if "pixel_values" in inputs:
        inputs = {"pixel_values": inputs["pixel_values"].to(dtype)}
    head = () if model_name == "llama" else ("classifier",)  # heads train in full, like the accuracy protocol
    randlora.adapt(model, CONFIGS[config_name](targets, head))
    layers = dict(randlora.adapter_layers(model))
    assert "classifier" not in layers and "lm_head" not in layers
    assert len(layers) == 2 * (7 if model_name == "llama" else 6)
    randomize_(model, scale=0.02)  # trained-sized updates: large ones overflow fp16
    logits = _logits(model, inputs)
    assert logits.dtype == dtype and torch.isfinite(logits).all()
    logits.float().pow(2).mean().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)


def test_bf16_autocast_with_fp32_master_weights_computes_adapter_in_bf16():
    torch.manual_seed(0)
    model, inputs, targets = tiny_llama()
    randlora.adapt(model, randlora.RandLoRAConfig(r=8, target_modules=targets))
    randomize_(model)
    seen = []
    layer = next(layer for _, layer in randlora.adapter_layers(model))
    layer.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = _logits(model, inputs).float().pow(2).mean()
    loss.backward()
    assert seen == [torch.bfloat16]
    assert layer.randlora_gamma.dtype == torch.float32 and layer.randlora_gamma.grad.dtype == torch.float32
