"""Vision models from the recipe, as Hugging Face classes so the export loads with ``transformers.AutoModel``.

``image_contrastive`` trains a ``ViTModel``: its features are the final-norm CLS state, ``last_hidden_state[:, 0]``;
its pooler (dense + tanh on that state) is the first layer of SimCLR's projection, whose other layers live in
the objective and are not exported, so every exported weight is trained and ``AutoModel`` loads it whole.
``image_text_contrastive`` trains a ``CLIPModel`` whose two towers share ``model.hidden_size`` / ``num_layers`` /
``num_heads`` / ``intermediate_size``; its text side reads captions of at most ``model.seq_len`` tokens of the
run's tokenizer and pools at the first EOS. Both are built on the meta device and initialized by
:func:`init_vision` from the seed (the transformers init, CLIP's ``logit_scale`` at log(1/0.07)), so a model
built on a device and one materialized from meta (FSDP2) hold the same weights.

Pixels: uint8 [B, H, W, 3] -> :func:`pixel_values` float [B, 3, H, W] in [-1, 1] (mean = std = 0.5), as the
exported ``preprocessor_config.json`` says.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pretrain.config import ModelConfig, RecipeError

if TYPE_CHECKING:
    import torch

MEAN = STD = (0.5, 0.5, 0.5)
# CLIPModel's text tower pools at argmax(input_ids) when its eos_token_id is 2 (a transformers compatibility path
# for the original checkpoints), which is wrong for any other vocabulary order: such a tokenizer cannot be used.
LEGACY_CLIP_EOS = 2


def vit_config(cfg: ModelConfig):
    from transformers import ViTConfig

    return ViTConfig(hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                     intermediate_size=cfg.intermediate_size, image_size=cfg.image_size, patch_size=cfg.patch_size,
                     num_channels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, layer_norm_eps=1e-6)


def clip_config(cfg: ModelConfig, vocab_size: int, eos_id: int, pad_id: int | None = None):
    from transformers import CLIPConfig

    if eos_id == LEGACY_CLIP_EOS:
        raise RecipeError("tokenizer: its end-of-text id is 2, which transformers' CLIPModel takes for the original "
                          "CLIP vocabulary (it then pools the caption at its highest token id); use a tokenizer "
                          "whose EOS is another id (this project's trained tokenizers use 0)")
    tower = {"hidden_size": cfg.hidden_size, "num_hidden_layers": cfg.num_layers,
             "num_attention_heads": cfg.num_heads, "intermediate_size": cfg.intermediate_size,
             "attention_dropout": 0.0}
    text = {**tower, "vocab_size": vocab_size, "max_position_embeddings": cfg.seq_len, "eos_token_id": eos_id,
            "bos_token_id": eos_id, "pad_token_id": eos_id if pad_id is None else pad_id}
    vision = {**tower, "image_size": cfg.image_size, "patch_size": cfg.patch_size, "num_channels": 3}
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=cfg.projection_dim)


def build_vision_model(cfg: ModelConfig, seed: int = 0, *, vocab_size: int = 0, eos_id: int = 0,
                       pad_id: int | None = None, device: str | torch.device = "cpu"):
    """``ViTModel`` (architecture vit) or ``CLIPModel`` (clip) in fp32, initialized from ``seed``; on ``device="meta"``
    without storage (materialize with ``to_empty`` then :func:`init_vision`)."""
    import torch
    from transformers import CLIPModel, ViTModel

    if cfg.architecture == "vit":
        with torch.device("meta"):
            model = ViTModel(vit_config(cfg))
    elif cfg.architecture == "clip":
        if vocab_size <= 0:
            raise RecipeError("model.architecture clip: the samples manifest names no tokenizer (vocab_size 0)")
        for name, token in (("eos_id", eos_id), ("pad_id", pad_id)):
            if token is not None and not 0 <= token < vocab_size:
                raise RecipeError(f"tokenizer: {name}={token} is outside the vocabulary ({vocab_size})")
        with torch.device("meta"):
            model = CLIPModel(clip_config(cfg, vocab_size, eos_id, pad_id))
    else:
        raise RecipeError(f"model.architecture: {cfg.architecture!r} is not a vision model (vit, clip)")
    if torch.device(device).type == "meta":
        return model
    model.to_empty(device=device)
    init_vision(model, seed)
    return model


def init_vision(model, seed: int) -> None:
    """The transformers init of every parameter and buffer, drawn from ``seed`` (the global RNG is left as it
    was); CLIP's ``logit_scale`` (a plain Parameter its init does not touch) at the config's log(1/0.07)."""
    import torch

    from pretrain.model.build import init_weights

    init_weights(model, seed, "hf")
    if hasattr(model, "logit_scale"):
        with torch.no_grad():
            model.logit_scale.fill_(float(model.config.logit_scale_init_value))


def pixel_values(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> float [B, 3, H, W], scaled to [0, 1] then normalized with mean = std = 0.5."""
    return to_unit(images).sub(0.5).div(0.5)


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> float [B, 3, H, W] in [0, 1] (the augmentations work there)."""
    return images.permute(0, 3, 1, 2).float().div(255.0)


def normalize(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] float [B, 3, H, W] -> the model's pixel values."""
    return x.sub(0.5).div(0.5)


def _pooled(output) -> torch.Tensor:
    """transformers 5 returns a ``BaseModelOutputWithPooling`` from ``get_*_features`` (4: the tensor itself)."""
    return output if not hasattr(output, "pooler_output") else output.pooler_output


def image_features(model, pixels: torch.Tensor) -> torch.Tensor:
    """Unnormalized image embeddings: CLIP's projected ones, a ViT's final-norm CLS state."""
    if hasattr(model, "get_image_features"):
        return _pooled(model.get_image_features(pixel_values=pixels))
    return model(pixel_values=pixels).last_hidden_state[:, 0]


def text_features(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """CLIP's unnormalized, projected caption embeddings (pooled at each caption's first EOS)."""
    return _pooled(model.get_text_features(input_ids=input_ids, attention_mask=attention_mask))


def image_processor(cfg: ModelConfig):
    """What ``AutoImageProcessor`` loads from the export: resize the shorter side to ``image_size``, center-crop,
    scale to [0, 1], normalize with mean = std = 0.5 (how training and evaluation see images)."""
    if cfg.architecture == "clip":
        from transformers import CLIPImageProcessor

        return CLIPImageProcessor(size={"shortest_edge": cfg.image_size},
                                  crop_size={"height": cfg.image_size, "width": cfg.image_size},
                                  image_mean=list(MEAN), image_std=list(STD), do_convert_rgb=True)
    from transformers import ViTImageProcessor

    return ViTImageProcessor(size={"height": cfg.image_size, "width": cfg.image_size}, image_mean=list(MEAN),
                             image_std=list(STD))
