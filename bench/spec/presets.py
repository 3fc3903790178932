"""Model presets: real architectures from transformers configs, with random weights.

A preset names a family (the transformers classes, the input kind, the default targets) and the config kwargs.
Models are built directly on the target device in the target dtype (`with torch.device(...)` and the default
dtype set), so an 8B model appears in seconds on a GPU instead of minutes of CPU init and a copy.
`hf:<path or hub id>` loads a causal LM with `from_pretrained` instead.

This module imports torch and transformers only inside `build`, so the harness's parent process stays light.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from randlora import ALL_LINEAR, LLAMA_PROJECTIONS

HF_PREFIX = "hf:"
# Every linear layer but the classification head, which trains in full (module names differ between
# transformers versions: ViT's `query` became `q_proj` in 5.x, so no names are spelled out).
ENCODER_TARGETS = (ALL_LINEAR,)
# An `hf:` model's default targets, by its config's `model_type`; a family not listed gets every linear layer but
# the output head (`all-linear`). GPT-2 keeps its projections in transformers' Conv1D, which randlora adapts too.
HF_TARGETS: dict[str, tuple[str, ...]] = {
    "llama": LLAMA_PROJECTIONS,
    "mistral": LLAMA_PROJECTIONS,
    "qwen2": LLAMA_PROJECTIONS,
    "gpt2": ("c_attn", "c_proj", "c_fc"),
}


@dataclass(frozen=True)
class Family:
    config_class: str  # a transformers config class, by name
    model_class: str  # a transformers model class, by name
    inputs: str  # "tokens" or "images": what the task must generate
    head: str  # "causal-lm" or "classification": which loss the model computes from `labels`
    targets: tuple[str, ...]  # what adapters wrap when a grid leaves `targets` unset
    trainable: tuple[str, ...] = ()  # trained in full by every method (the classification head)


FAMILIES = {
    "llama": Family("LlamaConfig", "LlamaForCausalLM", "tokens", "causal-lm", LLAMA_PROJECTIONS),
    "bert": Family(
        "BertConfig", "BertForSequenceClassification", "tokens", "classification", ENCODER_TARGETS, ("classifier",)
    ),
    "vit": Family(
        "ViTConfig", "ViTForImageClassification", "images", "classification", ENCODER_TARGETS, ("classifier",)
    ),
}


@dataclass(frozen=True)
class Preset:
    name: str
    family: str
    description: str
    config: dict = field(default_factory=dict)  # kwargs of the family's transformers config class

    @property
    def spec(self) -> Family:
        return FAMILIES[self.family]

    def max_seq_len(self) -> int | None:
        """The longest sequence the model's positions allow (None for image models, whose length is fixed)."""
        if self.spec.inputs == "images":
            return None
        return self.config.get("max_position_embeddings", 512)

    def tokens_per_sample(self, seq_len: int) -> int:
        """Tokens one sample carries: seq_len, or for a ViT the patches plus the CLS token."""
        if self.spec.inputs == "images":
            return (self.config.get("image_size", 224) // self.config.get("patch_size", 16)) ** 2 + 1
        return seq_len


def _llama(hidden: int, layers: int, ffn: int, heads: int, kv_heads: int, vocab: int = 32000, positions: int = 4096):
    return {
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "intermediate_size": ffn,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "vocab_size": vocab,  # 32000 for every shape, as in reports/ANCHORS.md (Llama 3's 128256 would add 0.8B at 8B)
        "max_position_embeddings": positions,
        "use_cache": False,  # training: no KV cache
    }


_TINY_ENCODER = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128}

# fmt: off
PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("tiny-llama", "llama", "Llama-shaped, 2 layers of 64: for CPUs and tests",
           _llama(hidden=64, layers=2, ffn=176, heads=4, kv_heads=2, vocab=1024, positions=512)),
    Preset("llama-60m", "llama", "Llama 60M (GaLore's shape: hidden 512, 8 layers)",
           _llama(hidden=512, layers=8, ffn=1376, heads=8, kv_heads=8)),
    Preset("llama-350m", "llama", "Llama 350M (GaLore's shape: hidden 1024, 24 layers)",
           _llama(hidden=1024, layers=24, ffn=2736, heads=16, kv_heads=16)),
    Preset("llama-1.1b", "llama", "TinyLlama 1.1B shape (hidden 2048, 22 layers, 4 kv heads), reports/ANCHORS.md",
           _llama(hidden=2048, layers=22, ffn=5632, heads=32, kv_heads=4)),
    Preset("llama-3b", "llama", "Llama 3.2 3B shape (hidden 3072, 28 layers, 8 kv heads)",
           _llama(hidden=3072, layers=28, ffn=8192, heads=24, kv_heads=8)),
    Preset("llama-8b", "llama", "Llama 3 8B shape (hidden 4096, 32 layers, 8 kv heads), reports/ANCHORS.md",
           _llama(hidden=4096, layers=32, ffn=14336, heads=32, kv_heads=8)),
    Preset("llama-13b", "llama", "Llama 2 13B shape (hidden 5120, 40 layers)",
           _llama(hidden=5120, layers=40, ffn=13824, heads=40, kv_heads=40)),
    Preset("llama-70b", "llama", "Llama 3 70B shape (hidden 8192, 80 layers, 8 kv heads)",
           _llama(hidden=8192, layers=80, ffn=28672, heads=64, kv_heads=8)),
    Preset("tiny-bert", "bert", "BERT-shaped, 2 layers of 64, 2 labels: for CPUs and tests",
           {**_TINY_ENCODER, "vocab_size": 1024, "num_labels": 2}),
    Preset("bert-base", "bert", "BERT-base (110M), 2 labels",
           {"num_labels": 2}),
    Preset("tiny-vit", "vit", "ViT-shaped, 32x32 images in 8x8 patches, 10 labels: for CPUs and tests",
           {**_TINY_ENCODER, "image_size": 32, "patch_size": 8, "num_labels": 10}),
    Preset("vit-base", "vit", "ViT-B/16 (86M), 224x224 images, 10 labels",
           {"num_labels": 10}),
)}
# fmt: on


@dataclass(frozen=True)
class ModelInfo:
    """What a task and the metrics need to know about a built model."""

    inputs: str  # "tokens" | "images"
    head: str  # "causal-lm" | "classification"
    vocab_size: int | None
    num_labels: int | None
    image_size: int | None
    num_channels: int | None
    num_layers: int
    hidden_size: int


def is_hf(model: str) -> bool:
    return model.startswith(HF_PREFIX)


def lookup(model: str) -> Preset | None:
    """The preset called `model`, None for an `hf:` model; ValueError (a clause: "is 'x'; allowed ...") if unknown."""
    if is_hf(model):
        if not model[len(HF_PREFIX) :]:
            raise ValueError(f"is {model!r}, which names no path or hub id after 'hf:'.")
        return None
    if model not in PRESETS:
        allowed = ", ".join(map(repr, PRESETS))
        raise ValueError(f"is {model!r}; allowed values are {allowed}, or 'hf:<path or hub id>'.")
    return PRESETS[model]


@contextlib.contextmanager
def default_dtype(dtype):
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build(model: str, dtype, device, trust_remote_code: bool = False):
    """(model, ModelInfo): a preset with random weights, or an `hf:` model from from_pretrained; `dtype` on `device`."""
    import torch
    import transformers

    if is_hf(model):
        net = transformers.AutoModelForCausalLM.from_pretrained(
            model[len(HF_PREFIX) :],
            dtype=dtype,
            device_map=str(device),
            attn_implementation="sdpa",
            trust_remote_code=trust_remote_code,
        )
        head, inputs = "causal-lm", "tokens"
    else:
        preset = PRESETS[model]
        config = getattr(transformers, preset.spec.config_class)(**preset.config, attn_implementation="sdpa")
        with torch.device(device), default_dtype(dtype):
            net = getattr(transformers, preset.spec.model_class)(config)
        head, inputs = preset.spec.head, preset.spec.inputs
    return net, model_info(net.config, head, inputs)


def model_info(config, head: str, inputs: str) -> ModelInfo:
    """What a task needs to know of a model, from its transformers config."""
    return ModelInfo(
        inputs=inputs,
        head=head,
        vocab_size=getattr(config, "vocab_size", None),
        num_labels=config.num_labels if head == "classification" else None,
        image_size=getattr(config, "image_size", None),
        num_channels=getattr(config, "num_channels", None),
        num_layers=config.num_hidden_layers,
        hidden_size=config.hidden_size,
    )


def meta_model(preset: Preset):
    """The preset's model on the meta device: its modules and shapes, no memory, no init cost."""
    import torch
    import transformers

    config = getattr(transformers, preset.spec.config_class)(**preset.config)
    with torch.device("meta"):
        return getattr(transformers, preset.spec.model_class)(config)


def parameter_count(preset: Preset) -> int:
    """Parameters of a preset, from its model built on the meta device."""
    return sum(p.numel() for p in meta_model(preset).parameters())


def default_modules(model: str, model_type: str | None = None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(targets, trainable) a cell uses when the grid leaves them unset; an `hf:` model's come from `HF_TARGETS`
    by its config's `model_type` (None: unknown), 'all-linear' for a family not listed."""
    preset = lookup(model)
    if preset is None:
        return HF_TARGETS.get(model_type, (ALL_LINEAR,)), ()
    return preset.spec.targets, preset.spec.trainable
