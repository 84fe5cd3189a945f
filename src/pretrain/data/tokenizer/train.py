"""Train the run's tokenizer on a sample drawn across sources.

Reading shards in manifest order lets the alphabetically first source dominate the vocabulary; here each
source gets its share of the character budget (equal, or by the mixture weights), and a source with less
text than its share hands the rest to the others. Texts stream record batch by record batch: the corpus is
never held in memory, and ``tokenizers`` keeps only word counts.
"""

from __future__ import annotations

import collections
import random
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import pyarrow as pa

from pretrain.data.documents import iter_batches
from pretrain.manifest import Manifest, Shard

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from pretrain.config import TokenizerConfig

EOS = "<|endoftext|>"
PAD = "<|pad|>"
MASK = "<|mask|>"
SPECIAL_TOKENS = (EOS, PAD, MASK)  # ids 0, 1, 2 of every trained tokenizer


def source_of(shard: Shard) -> str:
    return str(shard.meta.get("source", ""))


def source_weights(sources: Iterable[str], weights: dict[str, float] | None) -> dict[str, float]:
    """Each source's share of the budget: equal without weights, else the normalized weights (absent = 0)."""
    sources = sorted(set(sources))
    if not weights:
        return {s: 1.0 / len(sources) for s in sources}
    unknown = sorted(set(weights) - set(sources))
    if unknown:
        raise ValueError(f"mixture weights name unknown sources {unknown}; the documents have {sources}")
    total = sum(float(weights.get(s, 0.0)) for s in sources)
    if total <= 0:
        raise ValueError(f"mixture weights {weights} give every source a share of 0")
    return {s: float(weights.get(s, 0.0)) / total for s in sources}


class _SourceTexts:
    """One source's texts in a seeded shard order, handed out by character quota, whole documents."""

    def __init__(self, shards: list[Shard], rng: random.Random) -> None:
        self.shards = list(shards)
        rng.shuffle(self.shards)
        self._batches = self._read()
        self._pending: collections.deque[str] = collections.deque()
        self.exhausted = False
        self.taken = 0

    def _read(self) -> Iterator[list[str]]:
        for shard in self.shards:
            try:
                for batch in iter_batches(shard.url, columns=["text"]):
                    yield batch.column("text").to_pylist()
            except (pa.ArrowException, KeyError) as err:
                raise ValueError(f"documents shard {shard.url} cannot be read as text: {err}") from err

    def take(self, quota: float) -> Iterator[list[str]]:
        """Texts until ``quota`` characters are reached (the crossing document included) or the source ends."""
        got = 0
        while got < quota:
            if not self._pending:
                batch = next(self._batches, None)
                if batch is None:
                    self.exhausted = True
                    return
                self._pending = collections.deque(t for t in batch if t)
            out = []
            while self._pending and got < quota:
                out.append(self._pending.popleft())
                got += len(out[-1])
            self.taken += sum(map(len, out))
            yield out


def training_sample(documents: Manifest, budget_chars: int, weights: dict[str, float] | None = None,
                    seed: int = 0) -> Iterator[list[str]]:
    """Batches of texts, about ``budget_chars`` characters in all, shared across ``Shard.meta["source"]``.

    Water-filling: every round offers each source still holding text its share of what is left; a source
    that runs dry drops out and the next round shares its leftover among the rest by their weights.
    """
    by_source: dict[str, list[Shard]] = {}
    for shard in documents.shards:
        if shard.rows:
            by_source.setdefault(source_of(shard), []).append(shard)
    if not by_source or budget_chars <= 0:
        return
    share = source_weights(by_source, weights)
    streams = {s: _SourceTexts(by_source[s], random.Random(f"{seed}/{s}")) for s in sorted(by_source) if share[s] > 0}
    remaining = float(budget_chars)
    while remaining > 0 and streams:
        total = sum(share[s] for s in streams)
        quotas = {s: remaining * share[s] / total for s in streams}
        for name, quota in quotas.items():
            stream = streams[name]
            before = stream.taken
            yield from stream.take(quota)
            remaining -= stream.taken - before
            if stream.exhausted:
                del streams[name]


def train_tokenizer(batches: Iterable[list[str]], cfg: TokenizerConfig) -> Tokenizer:
    """A byte-level BPE or Unigram tokenizer with EOS, PAD and MASK as ids 0, 1, 2.

    Both work on the 256 byte symbols (GPT-2's byte-to-unicode alphabet, always kept whole), so every text
    encodes and nothing is ever ``<unk>``; Unigram needs no unknown token for the same reason.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if cfg.kind == "bpe":
        tok = Tokenizer(models.BPE())
        trainer = trainers.BpeTrainer(vocab_size=cfg.vocab_size, min_frequency=cfg.min_frequency,
                                      special_tokens=list(SPECIAL_TOKENS), initial_alphabet=alphabet,
                                      show_progress=False)
    elif cfg.kind == "unigram":
        tok = Tokenizer(models.Unigram())
        trainer = trainers.UnigramTrainer(vocab_size=cfg.vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                          initial_alphabet=alphabet, show_progress=False)
    else:
        raise ValueError(f"tokenizer.kind {cfg.kind!r}: expected 'bpe' or 'unigram'")
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.train_from_iterator(batches, trainer=trainer)
    return tok
