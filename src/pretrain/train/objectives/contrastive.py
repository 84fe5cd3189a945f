"""Contrastive objectives: SimCLR's NT-Xent on a ViT, CLIP's symmetric InfoNCE on a CLIPModel.

``ContrastiveModule`` is what DDP / FSDP2 wrap, as ``TrainModule`` is for text: ``.model`` is the Hugging Face
model (exported, by ``exported()``), ``.head`` SimCLR's projection MLP (checkpointed with it, never exported;
CLIP projects with its own layers). CLIP's ``logit_scale`` is held as a [1] tensor while training (FSDP2 shards
no 0-d parameter). Its ``forward(images uint8 [B, S, S, 3], captions [B, L] | None, attention [B, L] | None,
mask_seed)`` augments on the model's device (views drawn from ``mask_seed``), embeds, and returns the mean loss.

Negatives come from every rank: with ``gather`` in a group of several processes the L2-normalized embeddings
are all-gathered with gradient (``_GatherWithGradient``: its backward sums every rank's gradient into the
owner's rows), each rank scores its own rows against the whole global batch, and the mean
over ranks of the ranks' losses (what DDP and FSDP2's gradient averaging optimize) is exactly the loss of one
process on the concatenated batch.

``sums=True`` (held-out evaluation, no gather: each rank scores its batch alone) returns [summed loss, anchors,
anchors whose positive scores highest] (fp64) for the loop's ``evaluate_loss``: each view (SimCLR) or each image
and each caption (CLIP) is one anchor, so summed loss / anchors is the training loss and correct / anchors the
in-batch top-1 retrieval accuracy.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from pretrain.model.vision import image_features, normalize, text_features
from pretrain.train.augment import DEFAULTS, NONE, Augment, augment, resize, resolve

MAX_LOGIT_SCALE = 100.0  # CLIP clamps its learned temperature's inverse here


def view_seed(seed: int, view: int) -> int:
    from pretrain.train.objectives import mask_seed

    return mask_seed(seed, "view", view)


class _GatherWithGradient(torch.autograd.Function):
    """All-gather whose backward hands each rank the sum of every rank's gradient for its own rows (all-reduce,
    then its slice: gloo has no reduce-scatter). ``torch.distributed.nn.functional.all_gather`` does the same but
    is deprecated in torch 2.13 for a private module."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)  # autograd's own buffer is not ours to reduce into
        dist.all_reduce(grad)
        rows = grad.shape[0] // dist.get_world_size()
        return grad[dist.get_rank() * rows:(dist.get_rank() + 1) * rows]


def gather_rows(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(every rank's rows concatenated, with gradient; this rank's first row) in a group of several, else (x, 0)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    return _GatherWithGradient.apply(x), dist.get_rank() * x.shape[0]


def _sums(losses: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[summed loss, anchors, correct]: an anchor is correct when no candidate scores above its positive (so
    identical captions in one batch, which score alike, do not count as mistakes)."""
    correct = (logits.gather(1, targets[:, None]).squeeze(1) >= logits.max(dim=1).values).sum()
    return torch.stack([losses.sum().double(), torch.tensor(float(len(targets)), dtype=torch.float64,
                                                             device=losses.device), correct.double()])


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float, gather: bool = True,
            sums: bool = False) -> torch.Tensor:
    """SimCLR's loss on two views' L2-normalized embeddings [N, D]: each of the 2N anchors (2M globally) scores
    every other view of the batch (itself excluded) / ``temperature``; its positive is the other view of its image.
    """
    local = torch.cat([z1, z2], dim=0)  # [2N, D]: rows i and N + i are one image's two views
    n = z1.shape[0]
    if gather and not sums:
        all1, first = gather_rows(z1)
        all2, _ = gather_rows(z2)
    else:
        all1, all2, first = z1, z2, 0
    m = all1.shape[0]
    candidates = torch.cat([all1, all2], dim=0)  # [2M, D]
    logits = local @ candidates.T / temperature  # [2N, 2M]
    mine = torch.cat([torch.arange(n) + first, torch.arange(n) + first + m]).to(logits.device)
    logits = logits.masked_fill(F.one_hot(mine, 2 * m).bool(), float("-inf"))  # an anchor is not its own negative
    targets = torch.cat([mine[n:], mine[:n]])  # the other view
    losses = F.cross_entropy(logits, targets, reduction="none")
    return _sums(losses, logits, targets) if sums else losses.mean()


def clip_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor, gather: bool = True,
              sums: bool = False) -> torch.Tensor:
    """CLIP's symmetric InfoNCE on L2-normalized image and caption embeddings [N, D]: each image picks its caption
    among the global batch's captions and each caption its image, logits scaled by exp(``logit_scale``) <= 100;
    the mean of the two directions."""
    if gather and not sums:
        all_images, first = gather_rows(image)
        all_texts, _ = gather_rows(text)
    else:
        all_images, all_texts, first = image, text, 0
    scale = logit_scale.float().exp().clamp(max=MAX_LOGIT_SCALE)
    per_image = scale * image @ all_texts.T  # [N, M]
    per_text = scale * text @ all_images.T
    targets = torch.arange(image.shape[0], device=image.device) + first
    logits, both = torch.cat([per_image, per_text]), torch.cat([targets, targets])
    losses = F.cross_entropy(logits, both, reduction="none")
    return _sums(losses, logits, both) if sums else losses.mean()


class ProjectionHead(nn.Module):
    """SimCLR's head after the ViT's pooler (dense + tanh on the CLS state, exported with the ViT): Linear -> ReLU ->
    Linear to ``projection_dim``; the loss is computed on its output, the features are taken before the pooler."""

    def __init__(self, hidden: int, out: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden, hidden)
        self.fc2 = nn.Linear(hidden, out)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(h)))

    def reset(self, seed: int) -> None:
        """nn.Linear's own init, drawn from ``seed`` (the global RNG is left as it was)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.fc1.reset_parameters()
            self.fc2.reset_parameters()


class ContrastiveModule(nn.Module):
    """The vision model plus its objective (see the module docstring)."""

    def __init__(self, model: nn.Module, objective: str, *, temperature: float = 0.1, gather: bool = True,
                 augment: Augment | None = None, image_size: int | None = None, projection_dim: int = 128) -> None:
        super().__init__()
        if objective not in ("image_contrastive", "image_text_contrastive"):
            raise ValueError(f"ContrastiveModule: {objective!r} is not a contrastive objective")
        self.model = model
        self.objective = objective
        self.temperature = float(temperature)
        self.gather = bool(gather)
        self.augment = augment or DEFAULTS[objective]
        vision = getattr(model.config, "vision_config", model.config)
        self.image_size = int(image_size or vision.image_size)
        if objective == "image_contrastive":
            self.head = ProjectionHead(model.config.hidden_size, projection_dim)
        if getattr(model, "logit_scale", None) is not None and model.logit_scale.ndim == 0:
            # FSDP2 shards no 0-d parameter: train (and checkpoint) CLIP's logit scale as [1]; ``exported`` restores it
            model.logit_scale = nn.Parameter(model.logit_scale.detach().reshape(1))

    @classmethod
    def from_recipe(cls, model: nn.Module, recipe) -> ContrastiveModule:
        t = recipe.train
        return cls(model, t.objective, temperature=t.temperature, gather=t.gather_negatives,
                   augment=resolve(t.augment, t.objective, recipe.model.image_size),
                   image_size=recipe.model.image_size,
                   projection_dim=recipe.model.projection_dim)

    def reset(self, seed: int) -> None:
        """Initialize everything from ``seed``: the HF model's init, then the head's (meta-device materialization)."""
        from pretrain.model.vision import init_vision

        init_vision(self.model, seed)
        if hasattr(self, "head"):
            self.head.reset(seed + 1)

    def exported(self) -> nn.Module:
        """The Hugging Face model as transformers builds it (CLIP's logit scale a 0-d parameter again)."""
        scale = getattr(self.model, "logit_scale", None)
        if scale is not None and scale.ndim == 1:
            self.model.logit_scale = nn.Parameter(scale.detach().reshape(()))
        return self.model

    def device(self) -> torch.device:
        return next(p.device for p in self.parameters())

    def view(self, images: torch.Tensor, seed: int | None, settings: Augment | None = None) -> torch.Tensor:
        """One view's pixel values: augmented with ``settings`` (default: the objective's) from ``seed``."""
        settings = self.augment if settings is None else settings
        if settings == NONE:
            return normalize(resize(images, self.image_size))
        return normalize(augment(images, settings, self.image_size, seed))

    def forward(self, images: torch.Tensor, captions: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, mask_seed: int | None = None,
                sums: bool = False) -> torch.Tensor:
        device = self.device()
        images = images.to(device, non_blocking=True)
        if mask_seed is None:  # the loop passes one; without it, the global RNG decides
            mask_seed = int(torch.randint(0, 2**62, (1,)).item())
        gather = self.gather and not sums
        if self.objective == "image_contrastive":
            views = [self.view(images, view_seed(mask_seed, v)) for v in (0, 1)]
            z = self.head(self.model(pixel_values=torch.cat(views)).pooler_output)  # CLS -> pooler -> head
            z = F.normalize(z.float(), dim=-1)
            z1, z2 = z.chunk(2)
            return nt_xent(z1, z2, self.temperature, gather=gather, sums=sums)
        if captions is None:
            raise ValueError("image_text_contrastive: a batch needs captions")
        pixels = self.view(images, view_seed(mask_seed, 0), NONE if sums else None)  # held out: no augmentation
        image = F.normalize(image_features(self.model, pixels).float(), dim=-1)
        mask = None if attention_mask is None else attention_mask.to(device, non_blocking=True)
        text = F.normalize(text_features(self.model, captions.to(device, non_blocking=True).long(), mask).float(),
                           dim=-1)
        return clip_loss(image, text, self.model.logit_scale, gather=gather, sums=sums)
