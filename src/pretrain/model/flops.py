"""The numbers MFU is made of: model FLOPs per token, each device's peak FLOP/s, and their ratio.

Convention (PaLM appendix B, Megatron-LM, torchtitan's ``get_num_flop_per_token``): count matrix
multiplications only (2 * m * n * k each; norms, activations, softmax, RoPE and the embedding lookup
count 0), training = forward + backward = 3 x forward, and no credit for activation recompute. Attention
scores (Q K^T) and values (P V) count 2 * 2 * seq_len * (heads * head_dim) per token per layer forward
over the whole window, with no causal discount, which gives the familiar 12 * L * H * T training term;
a sliding-window layer counts its window's keys (ModernBERT's local layers: 2 * (local_attention // 2) + 1).
The LM head (vocab x hidden) is counted whether or not it is tied to the input embedding: tied weights
are still a matmul on every position (leaving it out under-counted a tied 125m model by ~27%).
"""

from __future__ import annotations

import math
import os
import re
import statistics
import time
from dataclasses import dataclass

import torch

TRAIN_MULTIPLIER = 3  # forward 1x, backward 2x (input and weight gradients)


@dataclass(frozen=True)
class ModelShape:
    """What FLOPs and memory need from a Hugging Face config, for Llama-style decoders, BERT and ModernBERT."""

    kind: str  # "llama" (any Llama-shaped decoder), "bert" or "modernbert"
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    glu: bool  # gated MLP: two input matrices (SwiGLU / GeGLU), else one (GeLU)
    tied: bool
    head_transform: bool  # encoders: dense hidden -> hidden (+ norm) before the decoder
    windows: tuple[int | None, ...]  # keys each query sees per layer; None: the whole sequence
    qk_norm: bool = False  # RMSNorm on queries and keys (Qwen3: per head, a head_dim weight each; OLMo-2: full width)

    @property
    def q_width(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_width(self) -> int:
        return self.kv_heads * self.head_dim


def model_shape(config) -> ModelShape:
    """The layer shapes of ``config`` (LlamaConfig-like, BertConfig or ModernBertConfig)."""
    kind = getattr(config, "model_type", "llama")
    hidden, heads, layers = config.hidden_size, config.num_attention_heads, config.num_hidden_layers
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    tied = bool(getattr(config, "tie_word_embeddings", True))
    common = {"hidden": hidden, "intermediate": config.intermediate_size, "layers": layers, "heads": heads,
              "head_dim": head_dim, "vocab": config.vocab_size, "tied": tied}
    if kind == "bert":
        return ModelShape(kind="bert", kv_heads=heads, glu=False, head_transform=True, windows=(None,) * layers,
                          **common)
    if kind == "modernbert":
        return ModelShape(kind="modernbert", kv_heads=heads, glu=True, head_transform=True,
                          windows=_modernbert_windows(config), **common)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    return ModelShape(kind="llama", kv_heads=kv_heads, glu=True, head_transform=False,
                      windows=_decoder_windows(config), qk_norm=kind in QK_NORM_TYPES, **common)


QK_NORM_TYPES = frozenset({"qwen3", "olmo2"})  # Llama-shaped decoders with q_norm / k_norm in every layer


def _decoder_windows(config) -> tuple[int | None, ...]:
    # LlamaConfig has no sliding window; Mistral-style configs see the last `sliding_window` tokens, in every
    # layer or in the layers that `layer_types` marks (Qwen2 keeps a window value it does not use)
    window, layers = getattr(config, "sliding_window", None), config.num_hidden_layers
    types = getattr(config, "layer_types", None)
    if types:
        return tuple(window if t == "sliding_attention" and window else None for t in types)
    if window and getattr(config, "use_sliding_window", True):
        return (window,) * layers
    return (None,) * layers


def _modernbert_windows(config) -> tuple[int | None, ...]:
    # sliding layers see +-sliding_window (= local_attention // 2) tokens around each query
    half = getattr(config, "sliding_window", None) or config.local_attention // 2
    types = getattr(config, "layer_types", None)
    if types is None:  # older configs: every n-th layer is global
        every = config.global_attn_every_n_layers
        types = ["full_attention" if i % every == 0 else "sliding_attention" for i in range(config.num_hidden_layers)]
    return tuple(2 * half + 1 if t == "sliding_attention" else None for t in types)


def flops_breakdown(config, seq_len: int, objective: str = "causal_lm", mask_probability: float = 0.15,
                    *, gathered_head: bool = True) -> dict[str, float]:
    """Training FLOPs per token by component, summed over layers (each value already x3 for backward).

    masked_lm: the head (transform + decoder) runs on ``mask_probability`` of the tokens when the objective
    gathers the masked positions before the head (``gathered_head``), else on every token.
    """
    s = model_shape(config)
    h, f, m = s.hidden, s.intermediate, TRAIN_MULTIPLIER
    attended = sum(seq_len if w is None else min(seq_len, w) for w in s.windows)  # keys, summed over layers
    head_share = mask_probability if objective == "masked_lm" and gathered_head else 1.0
    parts = {
        "q_proj": s.layers * 2 * h * s.q_width,
        "k_proj": s.layers * 2 * h * s.kv_width,
        "v_proj": s.layers * 2 * h * s.kv_width,
        "o_proj": s.layers * 2 * s.q_width * h,
        "mlp": s.layers * 2 * h * f * (3 if s.glu else 2),  # gate + up + down, or up + down
        # Q K^T and P V: 2 matmuls of 2 * keys * (heads * head_dim) per query; no causal discount
        "attention": 2 * 2 * attended * s.q_width,
        "head_transform": head_share * 2 * h * h if s.head_transform else 0.0,
        "lm_head": head_share * 2 * h * s.vocab,  # tied or not, the head is a matmul on every (scored) position
    }
    return {k: float(m * v) for k, v in parts.items()}


def flops_per_token(config, seq_len: int, objective: str = "causal_lm", mask_probability: float = 0.15,
                    *, gathered_head: bool = True) -> float:
    """Training (forward + backward) model FLOPs per token; see the module docstring for the convention."""
    return sum(flops_breakdown(config, seq_len, objective, mask_probability, gathered_head=gathered_head).values())


def tower_flops(hidden: int, intermediate: int, layers: int, tokens: int) -> float:
    """Forward matmul FLOPs of one pre-norm encoder tower (ViT, CLIP's towers) over ``tokens`` positions: q, k, v,
    o and a two-matrix GeLU MLP per position, scores and values over all ``tokens`` keys."""
    per_position = layers * (2 * 4 * hidden * hidden + 2 * 2 * hidden * intermediate + 2 * 2 * tokens * hidden)
    return float(tokens * per_position)


def flops_per_sample(config, objective: str, projection_dim: int = 128) -> float:
    """Training (forward + backward) model FLOPs per sample of an image objective, by the module docstring's
    convention: one image for CLIP (its vision tower at (image / patch)^2 + 1 positions, the patch embedding,
    the text tower at ``max_position_embeddings`` positions, both projections); two views through the ViT, its
    pooler and SimCLR's 2-layer head (hidden -> hidden -> projection_dim) for image_contrastive. The similarity matrix
    (2 x D per pair in the global batch) is left out: under 1% at these batch sizes.
    ``projection_dim``: SimCLR's head output (``model.projection_dim``); CLIP's config holds its own.
    """
    vision = getattr(config, "vision_config", config)
    patches = (vision.image_size // vision.patch_size) ** 2
    image = (tower_flops(vision.hidden_size, vision.intermediate_size, vision.num_hidden_layers, patches + 1)
             + patches * 2 * 3 * vision.patch_size**2 * vision.hidden_size)
    if objective == "image_text_contrastive":
        text = config.text_config
        caption = tower_flops(text.hidden_size, text.intermediate_size, text.num_hidden_layers,
                              text.max_position_embeddings)
        projections = 2 * config.projection_dim * (vision.hidden_size + text.hidden_size)
        return float(TRAIN_MULTIPLIER * (image + caption + projections))
    if objective == "image_contrastive":
        h, d = config.hidden_size, projection_dim
        return float(TRAIN_MULTIPLIER * 2 * (image + 2 * 2 * h * h + 2 * h * d))
    raise ValueError(f"flops_per_sample: {objective!r} is not an image objective")


def mfu(tokens_per_second_per_device: float, flops_per_token: float, peak_flops_per_device: float) -> float:
    """Model FLOPs utilization, per device on both sides: (global tokens/s / world size) * FLOPs/token / peak
    (image runs: samples/s and FLOPs per sample).

    Multiplying by the world size on one side and dividing by one device's peak on the other was the
    bug this function exists to prevent.
    """
    if peak_flops_per_device <= 0:
        raise ValueError(f"peak FLOP/s must be positive, got {peak_flops_per_device}")
    return tokens_per_second_per_device * flops_per_token / peak_flops_per_device


# Dense (no 2:4 sparsity) peak FLOP/s per GPU from NVIDIA's datasheets, which quote the sparse rate: half it.
# bf16 and tf32 are tensor-core rates; fp32 is the CUDA-core (non tensor-core) rate.
#   H100 / H200: H100 datasheet (SXM, PCIe, NVL columns) and H200 datasheet (SXM, NVL);
#   B200: HGX B200 datasheet (8 GPUs: 36 PF bf16, 18 PF tf32 sparse; 600 TF fp32) / 8;
#   GB200: GB200 NVL72 datasheet (360 PF bf16, 180 PF tf32 sparse, 5,760 TF fp32) / 72;
#   A100 (SXM and PCIe, 40 and 80 GB alike), L4, L40, L40S, A10: their datasheets.
# Precision: bf16 -> bf16 dense; fp32 with TF32 matmuls allowed -> tf32 dense; plain fp32 -> fp32.
PEAK_FLOPS: dict[str, dict[str, float]] = {
    "H100 SXM": {"bf16": 989e12, "tf32": 494.7e12, "fp32": 67e12},
    "H100 PCIe": {"bf16": 756e12, "tf32": 378e12, "fp32": 51e12},
    "H100 NVL": {"bf16": 835e12, "tf32": 417.5e12, "fp32": 60e12},
    "H200": {"bf16": 989e12, "tf32": 494.7e12, "fp32": 67e12},
    "H200 NVL": {"bf16": 835e12, "tf32": 417.5e12, "fp32": 60e12},
    "B200": {"bf16": 2250e12, "tf32": 1125e12, "fp32": 75e12},
    "GB200": {"bf16": 2500e12, "tf32": 1250e12, "fp32": 80e12},
    "A100": {"bf16": 312e12, "tf32": 156e12, "fp32": 19.5e12},
    "L4": {"bf16": 121e12, "tf32": 60e12, "fp32": 30.3e12},
    "L40S": {"bf16": 362e12, "tf32": 183e12, "fp32": 91.6e12},
    "L40": {"bf16": 181e12, "tf32": 90.5e12, "fp32": 90.5e12},
    "A10": {"bf16": 125e12, "tf32": 62.5e12, "fp32": 31.2e12},
}
# torch.cuda.get_device_name() strings -> table rows, most specific first ("NVIDIA H100 80GB HBM3" is the SXM
# part; "A10G" and "GB200" must not fall into "A10" and "B200", "L40S" not into "L4").
_DEVICE_NAMES: list[tuple[str, str]] = [
    (r"\bGB200\b", "GB200"), (r"\bB200\b", "B200"),
    (r"\bH200\b.*\bNVL\b", "H200 NVL"), (r"\bH200\b", "H200"),
    (r"\bH100\b.*\bNVL\b", "H100 NVL"), (r"\bH100\b.*\bPCIE\b", "H100 PCIe"), (r"\bH100\b", "H100 SXM"),
    (r"\bA100\b", "A100"), (r"\bL40S\b", "L40S"), (r"\bL40\b", "L40"), (r"\bL4\b", "L4"), (r"\bA10\b", "A10"),
]
_PRECISIONS = {"bf16": "bf16", "bfloat16": "bf16", "tf32": "tf32", "fp32": "fp32", "float32": "fp32"}
ENV_PEAK = "PRETRAIN_PEAK_FLOPS"


def matmul_precision(precision: str, tf32: bool, device_type: str = "cuda") -> str:
    """The peak to compare against: ``train.precision`` fp32 with ``train.tf32`` on a GPU runs its matmuls in TF32."""
    return "tf32" if precision == "fp32" and tf32 and device_type == "cuda" else precision


def lookup_peak(device_name: str, precision: str) -> tuple[float | None, str]:
    """(dense peak FLOP/s, the table row) for a CUDA device name, or (None, why) when the name is unknown."""
    kind = _precision(precision)
    for pattern, row in _DEVICE_NAMES:
        if re.search(pattern, device_name, flags=re.IGNORECASE):
            return PEAK_FLOPS[row][kind], f"table:{row} {kind}"
    return None, f"unknown:{device_name}"


def peak_flops(device: torch.device, precision: str, threads: int | None = None,
               *, probe_size: int = 4096) -> tuple[float | None, str]:
    """Per-device peak FLOP/s for ``precision`` (bf16 | tf32 | fp32) and how it was obtained.

    ``PRETRAIN_PEAK_FLOPS`` overrides everything ("env"); a CUDA device is looked up in ``PEAK_FLOPS``
    ("table:H100 SXM bf16"); a CPU is measured with ``matmul_probe`` on ``threads`` (default: torch's
    current thread count) in that dtype ("probe:cpu-bf16 4096x4096 2 threads"; TF32 does not exist on CPU,
    so tf32 probes fp32). Anything else: (None, "unknown:...") and no MFU is reported.
    """
    if os.environ.get(ENV_PEAK):
        return float(os.environ[ENV_PEAK]), "env"
    kind = _precision(precision)
    if device.type == "cuda":
        return lookup_peak(torch.cuda.get_device_name(device), kind)
    if device.type == "cpu":
        n = threads or torch.get_num_threads()
        dtype = torch.bfloat16 if kind == "bf16" else torch.float32
        label = "bf16" if kind == "bf16" else "fp32"
        return matmul_probe(dtype, probe_size, n), f"probe:cpu-{label} {probe_size}x{probe_size} {n} threads"
    return None, f"unknown:{device.type}"


def _precision(precision: str) -> str:
    if precision not in _PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(_PRECISIONS)}, got {precision!r}")
    return _PRECISIONS[precision]


_PROBES: dict[tuple[torch.dtype, int, int], float] = {}


def matmul_probe(dtype: torch.dtype = torch.bfloat16, size: int = 4096, threads: int | None = None,
                 repeats: int = 3, budget_s: float = 2.0) -> float:
    """Measured FLOP/s of a ``size`` x ``size`` matmul in ``dtype`` on ``threads`` CPU threads (cached per process).

    An untimed warm-up (thread pool, kernel selection) on a corner of the inputs, then up to ``repeats``
    timed runs while the time spent stays under ``budget_s`` (at least one), median. On 2 cores of a
    recent x86 server a 4096 matmul takes ~0.3 s in bf16 and ~0.9 s in fp32: the probe costs 1-2 s once.
    """
    n_threads = threads or torch.get_num_threads()
    key = (dtype, size, n_threads)
    if key in _PROBES:
        return _PROBES[key]
    before = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    try:
        with torch.no_grad():
            gen = torch.Generator().manual_seed(0)
            a = torch.rand(size, size, generator=gen).to(dtype)
            b = torch.rand(size, size, generator=gen).to(dtype)
            out = torch.zeros(size, size, dtype=dtype)  # zeros: its pages are touched before timing
            small = min(size, 1024)  # the warm-up starts the thread pool and picks the kernel at a fraction of the cost
            torch.mm(a[:small, :small], b[:small, :small])
            start = time.perf_counter()
            times: list[float] = []
            while len(times) < repeats:
                t0 = time.perf_counter()
                torch.mm(a, b, out=out)
                times.append(time.perf_counter() - t0)
                if t0 + 2 * times[-1] - start > budget_s:  # the next run would overshoot the budget
                    break
    finally:
        torch.set_num_threads(before)
    value = 2.0 * size**3 / statistics.median(times)
    if not math.isfinite(value) or value <= 0:
        raise RuntimeError(f"matmul probe measured {value} FLOP/s")
    _PROBES[key] = value
    return value
