"""Build the model from the recipe as a Hugging Face model class, so the export is a normal HF model.

``model.architecture`` (resolved by the recipe) picks the class: ``llama`` -> ``LlamaForCausalLM``,
``bert`` -> ``BertForMaskedLM``, ``modernbert`` -> ``ModernBertForMaskedLM``, all shaped by the same
``model.*`` keys. A model is always built on the meta device and initialized by :func:`init_weights`, so a
model built on a device and one materialized from meta (FSDP2: ``to_empty`` then ``init_weights``) hold the
same weights for the same seed. ``load_pretrained`` starts from a Hugging Face folder instead
(``model.init_from``, continued pre-training), checked before step 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pretrain import storage
from pretrain.config import ModelConfig, RecipeError

if TYPE_CHECKING:
    import torch

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


class InitFromError(RecipeError):
    """``model.init_from`` cannot be trained with this recipe; the message names the key and the URL."""


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
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        tie_word_embeddings=cfg.tie_embeddings,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        rms_norm_eps=1e-5,
        initializer_range=0.02,
        use_cache=False,  # a KV cache on every training forward is waste; the export turns it back on
    )


def bert_config(cfg: ModelConfig, vocab_size: int, eos_id: int, pad_id: int | None = None):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.seq_len, pad_token_id=pad_id, eos_token_id=eos_id, bos_token_id=eos_id,
        tie_word_embeddings=cfg.tie_embeddings, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        initializer_range=0.02, use_cache=False)


def modernbert_config(cfg: ModelConfig, vocab_size: int, eos_id: int, pad_id: int | None = None):
    """ModernBERT's own RoPE thetas (160k global, 10k local) unless ``model.rope_theta`` is set explicitly."""
    from transformers import ModernBertConfig

    rope = {}
    if "rope_theta" in cfg.model_fields_set:
        rope = {"global_rope_theta": cfg.rope_theta}
    return ModernBertConfig(
        vocab_size=vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.seq_len, pad_token_id=pad_id, eos_token_id=eos_id, bos_token_id=eos_id,
        cls_token_id=eos_id, sep_token_id=eos_id, tie_word_embeddings=cfg.tie_embeddings, **rope)


CONFIGS = {"llama": llama_config, "bert": bert_config, "modernbert": modernbert_config}


def resolved(architecture: str) -> str:
    """A bare ``ModelConfig`` (no recipe to resolve ``auto`` by the objective) builds the default, llama."""
    return "llama" if architecture == "auto" else architecture


def model_class(architecture: str):
    import transformers

    architecture = resolved(architecture)
    names = {"llama": "LlamaForCausalLM", "bert": "BertForMaskedLM", "modernbert": "ModernBertForMaskedLM"}
    if architecture not in names:
        raise RecipeError(f"model.architecture: {architecture!r} is not built here (llama, bert, modernbert)")
    return getattr(transformers, names[architecture])


def hf_config(cfg: ModelConfig, vocab_size: int, eos_id: int, pad_id: int | None = None):
    architecture = resolved(cfg.architecture)
    if architecture not in CONFIGS:
        raise RecipeError(f"model.architecture: {architecture!r} is not built here (llama, bert, modernbert)")
    return CONFIGS[architecture](cfg, vocab_size, eos_id, pad_id)


def build_model(cfg: ModelConfig, vocab_size: int, eos_id: int, pad_id: int | None = None, seed: int = 0, *,
                mask_id: int | None = None, device: str | torch.device = "cpu"):
    """A freshly initialized model in fp32; the same seed gives the same weights on every rank (CPU and CUDA
    draw different numbers), whether built here or materialized from ``device="meta"`` (parameters without
    storage: ``to_empty`` then ``init_weights(model, seed)``, as FSDP2's meta init does). The global RNG is left
    as it was.
    """
    import torch

    for name, token in (("eos_id", eos_id), ("pad_id", pad_id), ("mask_id", mask_id)):
        if token is not None and not 0 <= token < vocab_size:
            raise RecipeError(f"tokenizer: {name}={token} is outside the vocabulary ({vocab_size})")
    config = hf_config(cfg, vocab_size, eos_id, pad_id)
    with torch.device("meta"):
        model = model_class(cfg.architecture)(config)
    if torch.device(device).type == "meta":
        return model
    model.to_empty(device=device)
    init_weights(model, seed)
    return model


def init_weights(model, seed: int) -> None:
    """(Re)initialize every parameter and buffer the Hugging Face way, deterministically from ``seed``.

    HF marks initialized tensors (``_is_hf_initialized``) and skips them; after ``to_empty`` they hold garbage,
    so the marks are cleared first. Embeddings are re-tied afterwards.
    """
    import torch

    for module in model.modules():
        module.__dict__.pop("_is_hf_initialized", None)
        for tensor in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
            tensor.__dict__.pop("_is_hf_initialized", None)
    devices = {t.device for t in model.parameters()}
    with torch.random.fork_rng(devices=[d for d in devices if d.type == "cuda"], enabled=True):
        torch.manual_seed(seed)
        model.initialize_weights()
    model.tie_weights()


def check_vocab(model, vocab_size: int, where: str = "model") -> None:
    """Every token id of the tokenizer needs an embedding row (more rows are fine: padding to a multiple)."""
    rows = model.get_input_embeddings().weight.shape[0]
    if vocab_size > rows:
        raise InitFromError(f"{where}: the tokenizer has {vocab_size} tokens but the model's embedding has only "
                            f"{rows} rows")


def _auto_names(objective: str) -> tuple[dict[str, str], str]:
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    if objective == "masked_lm":
        return MODEL_FOR_MASKED_LM_MAPPING_NAMES, "AutoModelForMaskedLM"
    return MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, "AutoModelForCausalLM"


def auto_class(objective: str):
    import transformers

    return getattr(transformers, _auto_names(objective)[1])


def pretrained_config(url: str, objective: str):
    """The folder's config, checked to be a model of the objective (before any weight is read)."""
    from transformers import AutoConfig

    where = f"model.init_from ({url})"
    local = Path(storage.local_copy(url))
    if not (local / "config.json").is_file():
        raise InitFromError(f"{where}: not a Hugging Face model folder (no config.json)")
    if not any((local / name).is_file() for name in WEIGHT_FILES):
        raise InitFromError(f"{where}: no weights ({', '.join(WEIGHT_FILES)})")
    try:
        config = AutoConfig.from_pretrained(local)
    except (ValueError, KeyError, OSError) as err:
        raise InitFromError(f"{where}: config.json cannot be read ({err})") from err
    names, auto = _auto_names(objective)
    kind = "masked" if objective == "masked_lm" else "causal"
    if config.model_type not in names or getattr(config, "is_encoder_decoder", False):
        raise InitFromError(f"{where}: model type {config.model_type!r} is not a {kind} language model "
                            f"({auto} cannot load it), so it cannot train train.objective {objective}")
    encoder = config.model_type in _auto_names("masked_lm")[0] and not getattr(config, "is_decoder", False)
    if objective == "causal_lm" and encoder:  # e.g. BERT: AutoModelForCausalLM loads it, but it attends both ways
        raise InitFromError(f"{where}: model type {config.model_type!r} is a bidirectional encoder (config "
                            "is_decoder false), so it cannot train train.objective causal_lm")
    return config, str(local)


def max_positions(config) -> int | None:
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        if isinstance(value := getattr(config, key, None), int):
            return value
    return None


def load_pretrained(url: str, objective: str, seq_len: int, vocab_size: int, device: str | torch.device = "cpu"):
    """Continued pre-training: a Hugging Face folder's model in fp32, checked against the recipe first."""
    import torch

    where = f"model.init_from ({url})"
    config, local = pretrained_config(url, objective)
    limit = max_positions(config)
    if limit is not None and seq_len > limit:
        raise InitFromError(f"{where}: model.seq_len {seq_len} exceeds the model's max_position_embeddings {limit}")
    rows = getattr(config, "vocab_size", None)
    if isinstance(rows, int) and vocab_size > rows:
        raise InitFromError(f"{where}: the tokenizer has {vocab_size} tokens but the model's embedding has only "
                            f"{rows} rows")
    model = auto_class(objective).from_pretrained(local, dtype=torch.float32)
    check_vocab(model, vocab_size, where)
    model.config.use_cache = False
    return model.to(device)

