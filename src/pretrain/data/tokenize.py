"""Tokenize: train (or load) a byte-level BPE tokenizer and write train/validation token shards.

Training streams texts from the deduplicated shards up to ``tokenizer.train_chars``; encoding uses
``tokenizers``' batch encoding (Rust, multi-threaded). Each document goes wholly to train or to
validation by a hash of its id, so the split is stable when data is added.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Iterator

import xxhash

from pretrain import storage
from pretrain.config import Recipe, fingerprint
from pretrain.data.documents import iter_batches
from pretrain.manifest import Manifest, Shard, reuse
from pretrain.tokens import TokenShardWriter

EOS = "<|endoftext|>"
PAD = "<|pad|>"


def iter_texts(manifest: Manifest, max_chars: int | None = None) -> Iterator[list[str]]:
    total = 0
    for shard in manifest.shards:
        for batch in iter_batches(shard.url, columns=["text"]):
            texts = batch.column("text").to_pylist()
            yield texts
            total += sum(map(len, texts))
            if max_chars is not None and total >= max_chars:
                return


def train_bpe(batches: Iterator[list[str]], vocab_size: int, min_frequency: int):
    """A byte-level BPE: every byte sequence is encodable, so nothing is ever <unk>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(batches, trainer=trainer)
    return tok


def save_hf_tokenizer(tok, out_url: str, model_max_length: int) -> None:
    """Write a folder that ``transformers.AutoTokenizer.from_pretrained`` loads."""
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, pad_token=PAD,
                                 model_max_length=model_max_length)
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        storage.upload_dir(tmp, out_url)


def load_tokenizer(url: str):
    from tokenizers import Tokenizer

    return Tokenizer.from_str(storage.read_text(storage.join(url, "tokenizer.json")))


def tokenizer_hash(url: str) -> str:
    return hashlib.sha256(storage.read_bytes(storage.join(url, "tokenizer.json"))).hexdigest()[:16]


def is_validation(doc_id: str, val_fraction: float, seed: int) -> bool:
    return xxhash.xxh64_intdigest(doc_id.encode(), seed=seed) % 1_000_000 < val_fraction * 1_000_000


def tokenize(recipe: Recipe, documents: Manifest) -> Manifest:
    root = recipe.url("tokens")
    tok_url = recipe.url("tokenizer")
    fp = fingerprint(recipe.tokenizer.model_dump(), recipe.split.model_dump(), recipe.seed, documents.fingerprint)
    if (done := reuse(root, fp)) is not None:
        return done
    if recipe.tokenizer.path:
        tok = load_tokenizer(recipe.tokenizer.path)
        storage.upload_dir(storage.local_copy(recipe.tokenizer.path), tok_url)
    else:
        tok = train_bpe(iter_texts(documents, recipe.tokenizer.train_chars), recipe.tokenizer.vocab_size,
                        recipe.tokenizer.min_frequency)
        save_hf_tokenizer(tok, tok_url, recipe.model.seq_len)
    eos_id = tok.token_to_id(EOS)
    if eos_id is None:
        raise ValueError(f"tokenizer at {recipe.tokenizer.path or tok_url} has no {EOS} token")
    vocab, thash = tok.get_vocab_size(), tokenizer_hash(tok_url)
    shards: list[Shard] = []
    totals = {"train": {"tokens": 0, "documents": 0, "bytes": 0}, "val": {"tokens": 0, "documents": 0, "bytes": 0}}
    for n, shard in enumerate(documents.shards):
        writers = {split: TokenShardWriter(f"{root}/{split}/part-{n:05d}", vocab, eos_id, thash)
                   for split in ("train", "val")}
        for batch in iter_batches(shard.url, columns=["id", "text"]):
            ids, texts = batch.column("id").to_pylist(), batch.column("text").to_pylist()
            for doc_id, text, enc in zip(ids, texts, tok.encode_batch(texts), strict=True):
                split = "val" if is_validation(doc_id, recipe.split.val_fraction, recipe.seed) else "train"
                writers[split].add([*enc.ids, eos_id], len(text.encode("utf-8", "surrogatepass")))
        for split, writer in writers.items():
            header = writer.close()
            shards.append(Shard(url=writer.url, rows=header["tokens"], bytes=header["bytes"],
                                checksum=thash, meta={"split": split, "documents": header["documents"]}))
            for key in totals[split]:
                totals[split][key] += header[key]
    if totals["val"]["tokens"] <= recipe.model.seq_len + 1:
        raise ValueError(f"the validation split has only {totals['val']['tokens']} tokens (needs more than "
                         f"model.seq_len+1={recipe.model.seq_len + 1}): raise split.val_fraction or add data")
    result = Manifest(
        kind="tokens", root=root, fingerprint=fp, shards=shards,
        stats={"train_tokens": totals["train"]["tokens"], "val_tokens": totals["val"]["tokens"],
               "train_documents": totals["train"]["documents"], "val_documents": totals["val"]["documents"],
               "train_bytes": totals["train"]["bytes"], "val_bytes": totals["val"]["bytes"], "vocab_size": vocab},
        config={"tokenizer": recipe.tokenizer.model_dump(), "split": recipe.split.model_dump()},
        extra={"tokenizer": tok_url, "vocab_size": vocab, "eos_id": eos_id, "tokenizer_hash": thash},
    )
    result.save()
    return result


