"""Per-rank memory estimate, checked before step 1: a run that cannot fit fails in seconds, saying what to change.

Bytes per parameter (fp32 master weights; ``precision: bf16`` is autocast, the parameters stay fp32):
weights 4, gradients 4, AdamW 8 (two fp32 moments); Muon keeps one fp32 momentum (4) for the 2-D block
matrices and AdamW's 8 for embeddings, head, norms and biases. ``parallel: fsdp`` divides all three by
the world size and adds what is gathered (the root unit: embeddings and head, kept for the step; the
current and the prefetched block; one unit's unsharded gradients); ``ddp`` keeps full copies plus its
gradient buckets (another 4 bytes per parameter, with more than one rank).

Activations follow Korthikanti et al., "Reducing Activation Recomputation in Large Transformer Models"
(2022): a GPT layer saves s*b*h*(34 + 5*a*s/h) bytes in 16-bit without recompute. With SDPA/flash
attention the 5*a*s/h term (the s x s scores) is not stored. Rather than their 34 (GeLU MLP, dropout,
fp16 everywhere) we count what a Hugging Face layer here saves for backward, per token (checked in the
tests against the tensors autograd saves): norms keep their fp32 input (and RMSNorm its fp32 normalized
output) because the residual stream stays fp32 under autocast; each linear keeps its input, cast to
bf16 once per linear under autocast (q, k, v: three copies); SDPA keeps q, k, v and its output; the MLP
keeps its up/gate outputs and the activation and product (4 x intermediate gated, 2 x plain). For a
Llama layer in bf16 that is 16h + 2*(7h + 2*h_kv + 4*f) bytes per token. Autocast also caches a bf16
copy of each weight it casts, held until backward (2 bytes per matrix parameter), except under FSDP on
CUDA, whose mixed-precision policy gathers bf16 weights per block and frees them.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pretrain.config import TrainConfig
from pretrain.model.flops import ModelShape, model_shape
from pretrain.model.loss import chunk_rows

GIB = 1 << 30
FRAGMENTATION = 0.10  # allocator slack on top of everything counted
FIXED_OVERHEAD = {"cuda": int(1.5 * GIB), "cpu": GIB // 2}  # CUDA context + cuBLAS/NCCL workspaces; CPU runtime


class DoesNotFit(ValueError):
    """The estimated per-rank memory exceeds what the device has (or ``train.memory_gb`` allows)."""


@dataclass(frozen=True)
class ParameterCounts:
    embedding: int  # input embedding tables (and BERT's position / token-type tables)
    head: int  # an untied LM head's matrix (0 when tied: the embedding serves as the head)
    matrices: int  # 2-D weights inside the transformer blocks: Muon's share (train/optim.py split_parameters)
    head_transform: int  # encoders: the dense hidden x hidden before the decoder (AdamW under muon too)
    vectors: int  # norms and biases
    block: int  # one transformer block: FSDP's unit of all-gather

    @property
    def total(self) -> int:
        return self.embedding + self.head + self.matrices + self.head_transform + self.vectors


def parameter_counts(config) -> ParameterCounts:
    """Exact parameter counts of LlamaForCausalLM, BertForMaskedLM or ModernBertForMaskedLM built from ``config``."""
    s = model_shape(config)
    h, f, v = s.hidden, s.intermediate, s.vocab
    head = 0 if s.tied else v * h
    if s.kind == "bert":
        block_mat, block_vec = 4 * h * h + 2 * h * f, 4 * h + f + h + 2 * 2 * h  # q k v o + MLP; biases + 2 LayerNorms
        embedding = (v + config.max_position_embeddings + config.type_vocab_size) * h
        # embedding LayerNorm, transform bias + LayerNorm, decoder bias (untied: the decoder's own bias too)
        extra_vec = 2 * h + h + 2 * h + v * (1 if s.tied else 2)
        return ParameterCounts(embedding, head, s.layers * block_mat, h * h, s.layers * block_vec + extra_vec,
                               block_mat + block_vec)
    if s.kind == "modernbert":
        norm = h * (2 if config.norm_bias else 1)
        bias = (4 * h if config.attention_bias else 0) + (2 * f + h if config.mlp_bias else 0)
        block_mat, block_vec = 4 * h * h + 3 * h * f, 2 * norm + bias  # Wqkv, Wo, Wi (2f), Wo; attn + mlp norms
        vectors = s.layers * block_vec - norm  # layer 0 has no attention norm (the embedding norm precedes it)
        vectors += 3 * norm + (h if config.classifier_bias else 0) + (v if config.decoder_bias else 0)
        return ParameterCounts(v * h, head, s.layers * block_mat, h * h, vectors, block_mat + block_vec)
    block_mat = 2 * h * s.q_width + 2 * h * s.kv_width + 3 * h * f
    block_vec = 2 * h + (s.q_width + 2 * s.kv_width + h if getattr(config, "attention_bias", False) else 0)
    if s.qk_norm:  # Qwen3 normalizes each head with one head_dim weight; OLMo-2 the whole q and k widths
        block_vec += 2 * s.head_dim if getattr(config, "model_type", "") == "qwen3" else s.q_width + s.kv_width
    block_vec += 2 * f + h if getattr(config, "mlp_bias", False) else 0
    return ParameterCounts(v * h, head, s.layers * block_mat, 0, s.layers * block_vec + h, block_mat + block_vec)


@dataclass
class MemoryEstimate:
    """Bytes per rank. Peak = states + communication + the larger of the step's transients + overhead."""

    parameters: int
    gradients: int
    optimizer: int
    communication: int  # DDP gradient buckets, or FSDP's unsharded units in flight
    activations: int  # tensors saved for backward, plus one layer's backward working set
    weight_copies: int  # autocast's cached bf16 copies of the weights (not under FSDP on CUDA: bf16 gathers)
    logits: int  # LM-head logits and their loss buffers (one chunk with the chunked loss)
    optimizer_step: int  # the step's temporaries: Muon's Newton-Schulz (fused AdamW updates in place)
    overhead: int
    setup: str = ""
    inputs: tuple = field(default=(), repr=False, compare=False)  # what estimate_memory was called with

    @property
    def training(self) -> int:
        return self.activations + self.weight_copies + self.logits

    @property
    def total(self) -> int:
        states = self.parameters + self.gradients + self.optimizer + self.communication
        return states + max(self.training, self.optimizer_step) + self.overhead

    def describe(self) -> str:
        rows = [("parameters", self.parameters), ("gradients", self.gradients), ("optimizer", self.optimizer),
                ("communication", self.communication), ("activations", self.activations),
                ("weight copies", self.weight_copies), ("logits/loss", self.logits),
                ("optimizer step", self.optimizer_step), ("overhead", self.overhead)]
        lines = [f"per-rank memory estimate {gib(self.total)} ({self.setup})"]
        lines += [f"  {name:<15}{gib(value):>12}" for name, value in rows if value]
        if self.optimizer_step:
            lines.append("  (the optimizer step and activations + copies + logits do not overlap: the larger counts)")
        return "\n".join(lines)


def gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB"


def estimate_memory(config, train_cfg: TrainConfig, world_size: int, micro_batch_size: int, seq_len: int,
                    *, device_type: str = "cuda") -> MemoryEstimate:
    """Estimated peak bytes on each rank for a micro-batch of ``micro_batch_size`` x ``seq_len`` tokens.

    ``device_type`` ("cuda" or "cpu") decides the fixed overhead and FSDP's mixed precision (bf16
    all-gathers on CUDA only, see ``parallel.mixed_precision``; on CPU autocast casts the fp32 weights).
    """
    s, counts = model_shape(config), parameter_counts(config)
    fsdp, bf16 = train_cfg.parallel == "fsdp", train_cfg.precision == "bf16"
    bf16_params = fsdp and bf16 and device_type == "cuda"  # FSDP2 MixedPrecisionPolicy(param_dtype=bf16)
    shard = world_size if fsdp else 1
    local = math.ceil(counts.total / shard)
    muon_share = math.ceil(counts.matrices / shard) if train_cfg.optimizer == "muon" else 0
    adam_share = local - muon_share
    optimizer = 8 * adam_share + 4 * muon_share
    if fsdp:  # the root (embeddings, head) stays gathered; the current and the prefetched block; one unit's
        gathered = 2 if bf16_params else 4  # unsharded fp32 gradients before its reduce-scatter
        root = counts.embedding + counts.head + counts.head_transform
        communication = gathered * (root + 2 * counts.block) + 4 * max(root, counts.block)
    else:  # DDP (only with more than one rank) buckets a copy of the gradients (gradient_as_bucket_view off)
        communication = 4 * counts.total if world_size > 1 else 0
    tokens = micro_batch_size * seq_len
    activations = _activation_bytes(s, config, train_cfg, tokens, seq_len, bf16, device_type)
    chunked = train_cfg.loss == "chunked"
    # autocast's cached bf16 weight copies (the chunked loss casts the head's weight itself, in `logits`)
    cast = counts.matrices + counts.head_transform + (0 if chunked else s.vocab * s.hidden)
    weight_copies = 2 * cast if bf16 and not bf16_params else 0
    logits = _logits_bytes(s, train_cfg, tokens, bf16)
    if train_cfg.document_masking:  # the [B, 1, T, T] bool mask, and SDPA's additive float copy
        logits += micro_batch_size * seq_len * seq_len * (1 + (2 if bf16 else 4))
    # fused AdamW (train/optim.py, CUDA and CPU) updates in place; Muon orthogonalizes one whole matrix at a time
    # (gathered under FSDP): an fp32 Nesterov blend and a few bf16 Newton-Schulz products of the largest matrix
    largest = max(s.hidden * s.intermediate * (2 if s.kind == "modernbert" else 1), s.hidden * s.q_width)
    optimizer_step = 16 * largest if muon_share else 0
    counted = local * 8 + optimizer + communication + max(activations + weight_copies + logits, optimizer_step)
    overhead = FIXED_OVERHEAD.get(device_type, FIXED_OVERHEAD["cuda"]) + int(FRAGMENTATION * counted)
    model_type = getattr(config, "model_type", s.kind)  # qwen3 (Llama + QK-norm) is named as such
    setup = (f"{model_type} {counts.total / 1e9:.2f}B params, {train_cfg.parallel} x{world_size}, micro-batch "
             f"{micro_batch_size} x {seq_len}, {train_cfg.precision}, activation_checkpointing "
             f"{train_cfg.activation_checkpointing}, loss {train_cfg.loss}, {train_cfg.optimizer}")
    return MemoryEstimate(parameters=4 * local, gradients=4 * local, optimizer=optimizer, communication=communication,
                          activations=activations, weight_copies=weight_copies, logits=logits,
                          optimizer_step=optimizer_step, overhead=overhead, setup=setup,
                          inputs=(config, train_cfg, world_size, micro_batch_size, seq_len, device_type))


def _logits_bytes(s: ModelShape, train_cfg: TrainConfig, tokens: int, bf16: bool) -> int:
    """The head's logits and loss buffers; masked LM gathers the chosen rows before the head."""
    rows = math.ceil(tokens * train_cfg.mask_probability) if train_cfg.objective == "masked_lm" else tokens
    if train_cfg.loss == "plain":  # logits (bf16 under autocast), fp32 copy, saved log-softmax, its gradient
        return rows * s.vocab * (14 if bf16 else 12)
    # chunked (model/loss.py): one chunk's logits (matmul output + fp32 softmax in place), the fp32 grad_weight
    # accumulator, grad_hidden for every row and, under autocast, the head weight cast to bf16
    chunk = chunk_rows(rows, s.hidden, s.vocab)
    return (chunk * s.vocab * (6 if bf16 else 4) + 4 * s.vocab * s.hidden + 4 * rows * s.hidden
            + (2 * s.vocab * s.hidden if bf16 else 0))


def layer_activation_bytes(s: ModelShape, config, seq_len: int, bf16: bool, device_type: str = "cuda") -> int:
    """Bytes one layer saves for backward per token, without recompute (see the module docstring)."""
    p, r, h = (2 if bf16 else 4), 4, s.hidden
    norms = 2 * (2 if s.kind == "llama" else 1) * r * h  # RMSNorm (python): input + normalized; LayerNorm: input
    fused = s.kind == "modernbert"  # Wqkv and Wi are single linears: one cast of their input
    attn_in = 1 if not bf16 or fused else 3
    mlp_in = 1 if not bf16 or fused or not s.glu else 2
    mlp_inner = (4 if s.glu else 2) * s.intermediate  # up + gate outputs, activation, product; or 2 for GeLU
    # SDPA keeps q and k (after RoPE), v and its output (which the o-projection's input shares); a fused Wqkv's
    # v is a view that keeps the whole q|k|v output alive
    sdpa = 2 * s.q_width + 2 * s.kv_width + (s.q_width + s.kv_width if fused else 0)
    total = norms + p * (attn_in * h + sdpa + mlp_in * h + mlp_inner) + 4 * s.heads  # + softmax statistics
    if s.qk_norm:  # RMSNorm on q and k keeps its input (the projection's output) and the fp32 normalized copy
        total += (p + r) * (s.q_width + s.kv_width)  # measured: 8 bytes per element in fp32, 6 under bf16
    if getattr(config, "hidden_dropout_prob", 0.0):  # BERT: two bool dropout masks per layer
        total += 2 * h
    attention_dropout = getattr(config, "attention_probs_dropout_prob", None) or getattr(config, "attention_dropout", 0)
    eager = getattr(config, "_attn_implementation", "sdpa") == "eager"
    if eager or (attention_dropout and device_type == "cpu"):  # math path: s x s scores, probabilities, dropout
        total += 14 * s.heads * seq_len  # Korthikanti's 5*a*s/h term, measured ~13-14 bytes per score here
    return total


def _activation_bytes(s: ModelShape, config, train_cfg: TrainConfig, tokens: int, seq_len: int, bf16: bool,
                      device_type: str) -> int:
    layer = layer_activation_bytes(s, config, seq_len, bf16, device_type)
    p = 2 if bf16 else 4
    block_input = 4 * s.hidden  # what a checkpointed block keeps: its fp32 input
    # selective (model/parallel.py): the outputs of every matmul (q, k, v, o, up/gate, down) and of SDPA
    selective = block_input + p * (2 * s.q_width + 2 * s.kv_width + 2 * s.hidden + (2 if s.glu else 1) * s.intermediate)
    outside = 3 * 4 * s.hidden + 2 * p * s.hidden  # embedding / final norms, the head's input
    mode = train_cfg.activation_checkpointing
    if mode == "off":
        per_token = s.layers * layer + layer  # + one layer's gradients in flight during backward
    else:  # + one layer recomputed in backward and its gradients in flight
        per_token = s.layers * (block_input if mode == "full" else selective) + 2 * layer
    return tokens * (per_token + outside)


def _what_fits(estimate: MemoryEstimate, available: int) -> list[str]:
    """Each single change the recipe can make, with the estimate it gives; then all of them together."""
    config, cfg, world, micro, seq_len, device_type = estimate.inputs

    def total(c: TrainConfig, w: int = world, m: int = micro) -> int:
        return estimate_memory(config, c, w, m, seq_len, device_type=device_type).total

    def line(key: str, value: object, t: int) -> str:
        return f"  train.{key}: {value} -> {gib(t)} ({'fits' if t <= available else 'does not fit'})"

    changes = {"parallel": "fsdp", "activation_checkpointing": "full", "precision": "bf16", "loss": "chunked"}
    changes = {k: v for k, v in changes.items() if getattr(cfg, k) != v and not (k == "parallel" and world == 1)}
    lines = [line(k, v, total(cfg.model_copy(update={k: v}))) for k, v in changes.items()]
    best = cfg.model_copy(update=changes)
    if micro > 1:
        fitting = [m for m in range(micro - 1, 0, -1) if total(cfg, m=m) <= available]
        if fitting:
            lines.append(f"  train.micro_batch_size: {fitting[0]} (grad_accum_steps x{micro / fitting[0]:.3g} "
                         f"keeps the batch) -> {gib(total(cfg, m=fitting[0]))} (fits)")
        else:
            lines.append(line("micro_batch_size", 1, total(cfg, m=1)))
    if len(changes) > 1 or micro > 1:
        together = total(best, m=1)
        lines.append(f"  all of the above with micro_batch_size 1 -> {gib(together)} "
                     f"({'fits' if together <= available else 'does not fit'})")
    if total(best, m=1) > available:
        fsdp = best.model_copy(update={"parallel": "fsdp"})
        need = next((w for w in (2**i for i in range(1, 13)) if total(fsdp, w, 1) <= available), None)
        lines.append(f"  more devices: fsdp over >= {need} ranks of this size" if need else
                     "  a smaller model (model.preset) or devices with more memory")
    return lines


def check_fits(estimate: MemoryEstimate, available_bytes: int, source: str) -> None:
    """Raise ``DoesNotFit`` when ``estimate.total`` exceeds ``available_bytes`` (from ``source``)."""
    if estimate.total <= available_bytes:
        return
    hints = _what_fits(estimate, available_bytes) if estimate.inputs else []
    raise DoesNotFit(
        f"the model does not fit: about {gib(estimate.total)} needed per rank, {gib(available_bytes)} "
        f"({available_bytes / 1e9:.1f} GB) available ({source}).\n{estimate.describe()}\n"
        "Try (estimates with each change):\n" + "\n".join(hints) +
        "\nSet train.memory_gb to override the detected amount (per device, GB = 1e9 bytes).")


def device_memory_bytes(device: torch.device) -> int | None:
    """Memory one rank may use: a CUDA device's total; on CPU what is available (host or cgroup limit) / local ranks."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    if device.type != "cpu":
        return None
    available = [v for v in (_host_available(), _cgroup_available()) if v is not None]
    if not available:
        return None
    return min(available) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def available_memory(train_cfg: TrainConfig, device: torch.device) -> tuple[int | None, str]:
    """(bytes per rank, where the number came from): ``train.memory_gb`` when set, else detected."""
    if train_cfg.memory_gb is not None:
        return int(train_cfg.memory_gb * 1e9), f"train.memory_gb = {train_cfg.memory_gb:g}"
    detected = device_memory_bytes(device)
    what = "total memory of " + torch.cuda.get_device_name(device) if device.type == "cuda" else (
        "available system memory / LOCAL_WORLD_SIZE")
    return detected, f"detected: {what}"


def _host_available() -> int | None:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _cgroup_available(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """A container's limit minus its usage (cgroup v2, else v1); /proc/meminfo shows the host's memory."""
    v2, v1 = root, root / "memory"
    for limit, usage, stat, cache in ((v2 / "memory.max", v2 / "memory.current", v2 / "memory.stat", "inactive_file"),
                                      (v1 / "memory.limit_in_bytes", v1 / "memory.usage_in_bytes", v1 / "memory.stat",
                                       "total_inactive_file")):
        try:
            cap = limit.read_text().strip()
            used = int(usage.read_text().strip())
        except (OSError, ValueError):
            continue
        if not cap.isdigit() or int(cap) >= 1 << 60:  # "max" or v1's huge sentinel: no limit
            return None
        # the working set, as the kubelet counts it: usage less the reclaimable inactive page cache
        with contextlib.suppress(OSError, ValueError):
            fields = dict(line.split() for line in stat.read_text().splitlines() if line.count(" ") == 1)
            used -= int(fields.get(cache, 0))
        return max(0, int(cap) - used)
    return None


def _tower_shape(config) -> ModelShape:
    """A ViT / CLIP tower as the BERT-like pre-norm encoder layer it is (GeLU MLP, LayerNorm, full attention)."""
    h, heads, layers = config.hidden_size, config.num_attention_heads, config.num_hidden_layers
    return ModelShape(kind="bert", hidden=h, intermediate=config.intermediate_size, layers=layers, heads=heads,
                      kv_heads=heads, head_dim=h // heads, vocab=0, glu=False, tied=True, head_transform=False,
                      windows=(None,) * layers)


def estimate_vision_memory(module, train_cfg: TrainConfig, world_size: int, micro_batch_size: int,
                           *, device_type: str = "cuda") -> MemoryEstimate:
    """Per-rank peak bytes of an image objective (``ContrastiveModule``: a ViT or CLIPModel, SimCLR's head), by the
    text estimate's rules: parameter, gradient and optimizer bytes from the module's exact parameter count
    (AdamW's 8 bytes for every one, also under Muon: an upper bound), activations per tower from the same
    per-layer count as BERT's (ViT and CLIP layers are pre-norm GeLU encoder layers) over each sample's positions
    (two views for SimCLR; an image and a caption for CLIP), plus the similarity logits. No "what fits" hints."""
    from pretrain.model.parallel import transformer_blocks

    config = module.model.config
    fsdp, bf16 = train_cfg.parallel == "fsdp", train_cfg.precision == "bf16"
    bf16_params = fsdp and bf16 and device_type == "cuda"
    total = sum(p.numel() for p in module.parameters())
    blocks = transformer_blocks(module.model)
    block = max(sum(p.numel() for p in b.parameters()) for b in blocks)
    matrices = sum(p.numel() for b in blocks for p in b.parameters() if p.ndim == 2)
    shard = world_size if fsdp else 1
    local = math.ceil(total / shard)
    if fsdp:
        root = total - sum(p.numel() for b in blocks for p in b.parameters())
        communication = (2 if bf16_params else 4) * (root + 2 * block) + 4 * max(root, block)
    else:
        communication = 4 * total if world_size > 1 else 0
    vision = getattr(config, "vision_config", config)
    positions = (vision.image_size // vision.patch_size) ** 2 + 1
    towers = [(vision, positions, 2 if train_cfg.objective == "image_contrastive" else 1)]
    if hasattr(config, "text_config"):
        towers.append((config.text_config, config.text_config.max_position_embeddings, 1))
    activations = sum(_activation_bytes(_tower_shape(c), c, train_cfg, micro_batch_size * views * n, n, bf16,
                                        device_type) for c, n, views in towers)
    anchors = micro_batch_size * 2  # two views, or an image and a caption, per sample
    global_rows = anchors * (world_size if train_cfg.gather_negatives else 1)
    logits = 3 * 4 * anchors * global_rows  # fp32 logits, softmax and gradient
    weight_copies = 2 * matrices if bf16 and not bf16_params else 0
    counted = 8 * local + 8 * local + communication + activations + weight_copies + logits
    overhead = FIXED_OVERHEAD.get(device_type, FIXED_OVERHEAD["cuda"]) + int(FRAGMENTATION * counted)
    setup = (f"{config.model_type} {total / 1e6:.1f}M params, {train_cfg.parallel} x{world_size}, micro-batch "
             f"{micro_batch_size} images, {train_cfg.precision}, activation_checkpointing "
             f"{train_cfg.activation_checkpointing}")
    return MemoryEstimate(parameters=4 * local, gradients=4 * local, optimizer=8 * local, communication=communication,
                          activations=activations, weight_copies=weight_copies, logits=logits, optimizer_step=0,
                          overhead=overhead, setup=setup)
