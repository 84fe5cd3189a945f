"""Build the model from the recipe as a Hugging Face model class, so the export is a normal HF model."""

from __future__ import annotations

from pretrain.config import ModelConfig


def llama_config(cfg: ModelConfig, vocab_size: int, eos_id: int, pad_id: int | None = None):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads or cfg.num_heads,
        max_position_embeddings=cfg.seq_len,
        tie_word_embeddings=cfg.tie_embeddings,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        rms_norm_eps=1e-5,
        initializer_range=0.02,
        use_cache=True,
    )


def build_model(cfg: ModelConfig, vocab_size: int, eos_id: int, pad_id: int | None = None, seed: int = 0):
    """A freshly initialized causal LM; the same seed gives the same weights on every rank."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama_config(cfg, vocab_size, eos_id, pad_id))
    return model


def count_parameters(model, exclude_embeddings: bool = True) -> int:
    total = sum(p.numel() for p in model.parameters())
    if exclude_embeddings:
        total -= model.get_input_embeddings().weight.numel()
    return total


def flops_per_token(model, seq_len: int) -> float:
    """Training FLOPs per token, 6N plus attention (the PaLM appendix estimate), for MFU."""
    cfg = model.config
    n = count_parameters(model)
    return 6 * n + 12 * cfg.num_hidden_layers * cfg.hidden_size * seq_len
