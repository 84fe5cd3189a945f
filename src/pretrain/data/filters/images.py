"""Rules for image samples: the image itself (too small, too elongated), then its caption (``filter.profiles.caption``).

An image is judged on its ORIGINAL decoded size (``width``, ``height`` of the samples shard), not on the stored,
resized copy. A caption is short, so the document rules (Gopher, C4, FineWeb) do not apply; it goes through word
counts and the same gibberish, toxic and PII rules as text (PII redacted, as the text profiles do). An empty caption
passes (``min_words`` counts only captions that exist): image-only runs need none, and image-text runs drop samples
without one when they split (``no_caption``).

Reasons are ``images.min_size`` (value: the shorter side), ``images.max_aspect`` (long / short side), then the caption's
``min_words``, ``max_words``, ``gibberish.max_score``, ``toxic.max_fraction`` (``toxic.classifier``): the keys of
``filter.profiles.caption`` they read.
"""

from __future__ import annotations

from typing import Any

from pretrain.config import CaptionProfile, FilterConfig, ImageFilterSettings
from pretrain.data.filters import profiles
from pretrain.data.filters.base import Doc, Rule, Step, above, below

PROFILE = "caption"


class SampleDoc(Doc):
    """A sample's caption as a document, with the original size of its image."""

    def __init__(self, text: str, *, width: int, height: int, url: str = "", license: str = "",
                 meta: dict[str, Any] | None = None) -> None:
        super().__init__(text, url=url, license=license, meta=meta)
        self.width = width
        self.height = height

    def with_text(self, text: str) -> SampleDoc:
        doc = SampleDoc(text, width=self.width, height=self.height, url=self.url, license=self.license,
                        meta=self.meta)
        if "language" in self.__dict__:
            doc.__dict__["language"] = self.language
        return doc


def _size(doc: Doc) -> tuple[int, int]:
    return int(getattr(doc, "width", 0) or 0), int(getattr(doc, "height", 0) or 0)


def aspect(width: int, height: int) -> float:
    """Long side over short side (infinite for a degenerate image with a zero side)."""
    short, long = min(width, height), max(width, height)
    return long / short if short > 0 else float("inf")


def image_rules(cfg: ImageFilterSettings) -> list[Step]:
    """``images.min_size`` (shorter side < ``min_size``) and ``images.max_aspect`` (long / short > ``max_aspect``)."""
    if not cfg.enabled:
        return []
    steps: list[Step] = []
    if cfg.min_size is not None:
        steps.append(Rule("images.min_size", lambda d: below(min(_size(d)), cfg.min_size)))
    if cfg.max_aspect is not None:
        steps.append(Rule("images.max_aspect", lambda d: above(aspect(*_size(d)), cfg.max_aspect)))
    return steps


def caption_rules(prof: CaptionProfile) -> list[Step]:
    """Word counts of a non-empty caption, then the shared gibberish, toxic and PII steps with the caption's
    settings (each left out, as for text, when its module is not installed)."""
    steps: list[Step] = [
        Rule("min_words", lambda d: below(len(d.words), prof.min_words)),
        Rule("max_words", lambda d: above(len(d.words), prof.max_words)),
    ]
    steps += profiles._gibberish(prof.gibberish)
    steps += profiles._toxic(prof.toxic, f"filter.profiles.{PROFILE}.toxic")
    steps += profiles._pii(prof.pii)
    return [_captioned(s) for s in steps]


def _captioned(step: Step) -> Step:
    """The rule judging only a caption that exists (an empty one would be "gibberish" with no letters)."""
    if not isinstance(step, Rule):
        return step
    judge = step.judge
    return Rule(step.name, lambda d: judge(d) if d.text.strip() else None)


def build(cfg: FilterConfig) -> list[Step]:
    """The ordered steps of an image sample: the image rules (cheap) first, then the caption's."""
    return image_rules(cfg.images) + caption_rules(cfg.profiles.caption)
