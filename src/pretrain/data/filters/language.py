"""Language identification with the model that ships inside ``py3langid`` (no download).

``identify`` returns an ISO 639-1 code and a normalized probability. py3langid also knows ``zxx``
("no linguistic content"), which the gibberish rule uses. Only the head of a long document is
classified: the language of a page rarely changes after its first few thousand characters.
"""

from __future__ import annotations

import functools

HEAD_CHARS = 4000
NO_LANGUAGE = "zxx"


@functools.lru_cache(maxsize=1)
def _identifier():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def identify(text: str) -> tuple[str, float]:
    """(language code, probability 0..1) of ``text``; ("zxx", 1.0) for text with no letters at all."""
    head = text[:HEAD_CHARS]
    if not any(ch.isalpha() for ch in head):
        return NO_LANGUAGE, 1.0
    lang, prob = _identifier().classify(head)
    return str(lang), float(prob)
