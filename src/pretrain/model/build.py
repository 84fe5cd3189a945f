"""Build the model from the recipe as a Hugging Face model class, so the export is a normal HF model.

``model.architecture`` (resolved by the recipe) picks the class: ``llama`` -> ``LlamaForCausalLM`` (with
``model.qk_norm``: ``Qwen3ForCausalLM``, the same decoder plus an RMSNorm on each head's queries and keys),
``bert`` -> ``BertForMaskedLM``, ``modernbert`` -> ``ModernBertForMaskedLM``, all shaped by the same
``model.*`` keys; ``model.init`` picks the HF init or the depth-scaled one (:func:`scaled_init`). A model is
always built on the meta device and initialized by :func:`init_weights`, so a model built on a device and one
materialized from meta (FSDP2: ``to_empty`` then ``init_weights``) hold the same weights for the same seed.
``load_pretrained`` starts from a Hugging Face folder instead (``model.init_from``, continued pre-training),
checked before step 1.
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


def qwen3_config(cfg: ModelConfig, vocab_size: int, eos_id: int, pad_id: int | None = None):
    """``model.qk_norm``: Qwen3 is Llama's decoder plus per-head q/k RMSNorm, loadable without remote code.
    Its own defaults differ from Llama's where it matters, so every one is pinned: head_dim = hidden / heads (Qwen3
    defaults to 128), no attention bias, no sliding window, Llama's norm eps."""
    from transformers import Qwen3Config

    return Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads or cfg.num_heads,
        head_dim=cfg.hidden_size // cfg.num_heads,
        max_position_embeddings=cfg.seq_len,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        tie_word_embeddings=cfg.tie_embeddings,
        attention_bias=False,
        use_sliding_window=False,
        sliding_window=None,
        max_window_layers=cfg.num_layers,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        rms_norm_eps=1e-5,
        initializer_range=0.02,
        use_cache=False,
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


# What each built variant is: its config function and transformers class ("qwen3": llama with model.qk_norm).
CONFIGS = {"llama": llama_config, "qwen3": qwen3_config, "bert": bert_config, "modernbert": modernbert_config}
CLASSES = {"llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM", "bert": "BertForMaskedLM",
           "modernbert": "ModernBertForMaskedLM"}


def resolved(architecture: str, qk_norm: bool = False) -> str:
    """The variant built: a bare ``ModelConfig`` (no recipe to resolve ``auto`` by the objective) builds the
    default, llama; llama with ``qk_norm`` builds qwen3."""
    architecture = "llama" if architecture == "auto" else architecture
    if qk_norm:
        if architecture != "llama":
            raise RecipeError(f"model.qk_norm: model.architecture {architecture} has no QK-norm variant (llama only)")
        return "qwen3"
    return architecture


def model_class(architecture: str, qk_norm: bool = False):
    import transformers

    variant = resolved(architecture, qk_norm)
    if variant not in CLASSES:
        raise RecipeError(f"model.architecture: {architecture!r} is not built here (llama, bert, modernbert)")
    return getattr(transformers, CLASSES[variant])


def hf_config(cfg: ModelConfig, vocab_size: int, eos_id: int, pad_id: int | None = None):
    variant = resolved(cfg.architecture, cfg.qk_norm)
    if variant not in CONFIGS:
        raise RecipeError(f"model.architecture: {cfg.architecture!r} is not built here (llama, bert, modernbert)")
    return CONFIGS[variant](cfg, vocab_size, eos_id, pad_id)


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
        model = model_class(cfg.architecture, cfg.qk_norm)(config)
    model.pretrain_init = cfg.init  # what init_weights does, on every later call too (FSDP2's meta init)
    if torch.device(device).type == "meta":
        return model
    model.to_empty(device=device)
    init_weights(model, seed)
    return model


INIT_STD = 0.02  # GPT-2's and OLMo's std for every Linear and Embedding weight (model.init: scaled)


def init_weights(model, seed: int, scheme: str | None = None) -> None:
    """(Re)initialize every parameter and buffer, deterministically from ``seed``: the one place a model's initial
    weights come from, whether built on a device or materialized from meta.

    ``scheme`` (default: the ``model.init`` that :func:`build_model` recorded on the model, else ``hf``): ``hf`` is
    the class's own init; ``scaled`` then redraws the weights by :func:`scaled_init` (buffers such as RoPE's
    ``inv_freq`` and the norms still come from the HF init). HF marks initialized tensors (``_is_hf_initialized``)
    and skips them; after ``to_empty`` they hold garbage, so the marks are cleared first. Embeddings are re-tied
    afterwards.
    """
    import torch

    scheme = scheme or getattr(model, "pretrain_init", "hf")
    if scheme not in ("hf", "scaled"):
        raise RecipeError(f"model.init: {scheme!r} is not hf or scaled")
    for module in model.modules():
        module.__dict__.pop("_is_hf_initialized", None)
        for tensor in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
            tensor.__dict__.pop("_is_hf_initialized", None)
    devices = {t.device for t in model.parameters()}
    with torch.random.fork_rng(devices=[d for d in devices if d.type == "cuda"], enabled=True):
        torch.manual_seed(seed)
        model.initialize_weights()
        if scheme == "scaled":
            scaled_init(model)
    model.tie_weights()


def residual_projections(model) -> list:
    """The Linears that write into the residual stream: in each transformer block, the last Linear of each child
    module (attention, MLP) that maps back to the hidden size. Found by structure, not name: Llama/Qwen3
    ``o_proj`` and ``down_proj``, ModernBERT's two ``Wo``, BERT's ``attention.output.dense`` and ``output.dense``
    (its ``intermediate.dense`` widens to the MLP size, so it is not one)."""
    from torch import nn

    from pretrain.model.parallel import transformer_blocks

    hidden = model.get_input_embeddings().weight.shape[1]
    found = []
    for block in transformer_blocks(model):
        for child in block.children():
            linears = [m for m in child.modules() if isinstance(m, nn.Linear)]
            if linears and linears[-1].out_features == hidden:
                found.append(linears[-1])
    return found


def scaled_init(model) -> None:
    """``model.init: scaled``: every Linear and Embedding weight ~ N(0, 0.02), biases 0, an embedding's padding row
    0 (as HF's init); the residual output projections ~ N(0, 0.02 / sqrt(2 * layers)): each of the 2 * layers
    branches adds its output to the residual stream, so its variance then stays that of one branch at any depth
    (GPT-2, OLMo). Norms keep the HF init (weight 1, bias 0). Draws in module order from the current RNG."""
    import math

    import torch
    from torch import nn

    from pretrain.model.parallel import transformer_blocks

    layers = len(transformer_blocks(model))
    residual = {id(m) for m in residual_projections(model)}
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear):
                std = INIT_STD / math.sqrt(2 * layers) if id(module) in residual else INIT_STD
                module.weight.normal_(0.0, std)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.Embedding):
                module.weight.normal_(0.0, INIT_STD)
                if module.padding_idx is not None:
                    module.weight[module.padding_idx].zero_()


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

