"""The training mixture: each source's share of the training tokens, as epochs over its own tokens.

An epoch of the mixture holds as many tokens as the sources hold together (``A``). A source with weight
``w`` (normalized) is planned ``w * A`` tokens: ``epochs = w * A / available`` repeats its windows (> 1)
or samples a random subset of them (< 1). With no weights every source keeps its natural share (epochs 1).
"""

from __future__ import annotations

from pretrain.config import RecipeError


def plan_mixture(available: dict[str, int], weights: dict[str, float]) -> dict[str, dict[str, float | int]]:
    """Per source: normalized weight, available and planned training tokens, epochs."""
    total = sum(available.values())
    if not weights:
        weights = {k: float(v) for k, v in available.items()}
    norm = sum(weights.get(k, 0.0) for k in available)
    if total <= 0 or norm <= 0:
        raise RecipeError("mixture: no training tokens in any weighted source")
    out: dict[str, dict[str, float | int]] = {}
    for source, tokens in sorted(available.items()):
        share = weights.get(source, 0.0) / norm
        if share > 0 and tokens <= 0:
            raise RecipeError(f"mixture.weights.{source}: the source has no training tokens left after cleaning")
        planned = round(share * total)
        out[source] = {"weight": share, "available_tokens": int(tokens), "planned_tokens": int(planned),
                       "epochs": planned / tokens if tokens else 0.0}
    return out


def markdown(mixture: dict[str, dict[str, float | int]], realized: dict[str, int] | None = None) -> str:
    """The mixture as a table: per source its weight, tokens available and planned per epoch, epochs, and the
    tokens training really read when known."""
    head = "| source | weight | available tokens | planned tokens | epochs |" + (" trained tokens |" if realized
                                                                                 is not None else "")
    lines = ["#### Mixture", "", head, "|---|---|---|---|---|" + ("---|" if realized is not None else "")]
    for source, m in mixture.items():
        row = (f"| {source} | {m['weight']:.3f} | {m['available_tokens']:,} | {m['planned_tokens']:,} | "
               f"{m['epochs']:.2f} |")
        if realized is not None:
            row += f" {realized.get(source, 0):,} |"
        lines.append(row)
    return "\n".join(lines) + "\n"
