"""MinHash signatures and LSH band keys for a batch of texts, without a Python loop over words or permutations.

Words: lowercased text split on whitespace, with punctuation stripped from each word (words of
punctuation only are dropped); CJK, Thai, Lao, Khmer and Myanmar characters count as one word each
(those scripts do not separate words by spaces), so no script is left without shingles. Arrow does
the splitting over the whole batch; each distinct word of the batch is cleaned and hashed once (a
vectorized polynomial hash over its UTF-8 bytes, then splitmix64);
shingles of ``k`` consecutive words are combined from the word hashes with numpy; a document with
fewer than ``k`` words is one shingle. ``rensa``'s RMinHash (Rust) turns the flat shingle hashes into
the signature matrix, and each band of ``rows`` values is folded into one 64-bit band key.
"""

from __future__ import annotations

import itertools

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import rensa

_ONE_CHAR_WORDS = r"([\p{Han}\p{Hiragana}\p{Katakana}\p{Hangul}\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}])"
_NOT_WORD = r"[^\p{L}\p{N}\p{M}_]+"
_MUL = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: spreads combined hashes over all 64 bits (wrapping uint64 arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * _MIX1
    x = x ^ (x >> np.uint64(27))
    x = x * _MIX2
    return x ^ (x >> np.uint64(31))


def word_hashes(words: pa.Array) -> np.ndarray:
    """uint64 hash of each string, from its UTF-8 bytes with numpy (no Python loop): sum of byte_i * P^i
    (wrapping), salted with the length and finished by splitmix64. Empty strings hash alike (and are dropped)."""
    if isinstance(words, pa.ChunkedArray):
        words = words.combine_chunks()
    n = len(words)
    if n == 0:
        return np.zeros(0, np.uint64)
    off_type = np.int64 if words.type == pa.large_string() else np.int32
    offsets = np.frombuffer(words.buffers()[1], off_type)[words.offset:words.offset + n + 1].astype(np.int64)
    data = np.frombuffer(words.buffers()[2] or b"", np.uint8)[offsets[0]:offsets[-1]]
    offsets -= offsets[0]
    lengths = np.diff(offsets)
    position = np.arange(len(data), dtype=np.int64) - np.repeat(offsets[:-1], lengths)
    power = _powers(int(lengths.max()))
    terms = (data.astype(np.uint64) + np.uint64(1)) * power[position]
    sums = np.zeros(n, np.uint64)
    nonempty = lengths > 0
    if len(data):
        sums[nonempty] = np.add.reduceat(terms, offsets[:-1][nonempty])
    return _mix(sums ^ _mix(lengths.astype(np.uint64) + _MUL))


def _powers(n: int) -> np.ndarray:
    """_MUL ** i for i < n, wrapping in uint64."""
    out = np.ones(max(n, 1), np.uint64)
    step = 1
    while step < n:  # doubling: out[step:2 step] = out[:step] * _MUL ** step
        block = min(step, n - step)
        out[step:step + block] = out[:block] * (out[step - 1:step] * _MUL)  # arrays wrap silently
        step += block
    return out


def words(texts: pa.Array) -> pa.ListArray:
    """Each text lowercased and split on whitespace (CJK/Thai/...: also around each character), by Arrow."""
    lowered = pc.utf8_lower(texts.fill_null(""))
    return pc.utf8_split_whitespace(pc.replace_substring_regex(lowered, _ONE_CHAR_WORDS, r" \1 "))


def shingles(texts: pa.Array, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat uint64 shingle hashes and the row offsets (len(texts) + 1) of each text's shingles."""
    lists = words(texts)
    n_docs = len(texts)
    encoded = pc.dictionary_encode(pc.list_flatten(lists))
    # Punctuation is stripped from the batch's distinct words only (cheap): "world!" == "world";
    # words of punctuation only ("=", "--", "#") are dropped, like the empty strings splitting leaves.
    vocab = pc.replace_substring_regex(encoded.dictionary, _NOT_WORD, "")
    vocab_hash = word_hashes(vocab)
    vocab_keep = pc.greater(pc.binary_length(vocab), 0).to_numpy(zero_copy_only=False)
    indices = encoded.indices.to_numpy()
    nonempty = vocab_keep[indices]
    doc = pc.list_parent_indices(lists).to_numpy().astype(np.int64)[nonempty]
    word = vocab_hash[indices[nonempty]]
    if len(word) == 0:
        return np.zeros(0, np.uint64), np.zeros(n_docs + 1, np.uint64)
    n_words = np.bincount(doc, minlength=n_docs)
    offsets = np.zeros(n_docs + 1, np.int64)
    np.cumsum(n_words, out=offsets[1:])
    total = len(word)
    ends = np.repeat(offsets[1:], n_words)
    combined = word.copy()
    short_docs = [np.flatnonzero(n_words == 1)]
    short_hashes = [combined[offsets[short_docs[0]]]]
    for j in range(1, k):
        nxt = np.zeros(total, np.uint64)
        nxt[: total - j] = word[j:]
        combined = combined * _MUL + nxt
        short = np.flatnonzero(n_words == j + 1)
        short_docs.append(short)
        short_hashes.append(combined[offsets[short]])
    valid = np.flatnonzero(np.arange(total) + k <= ends)
    if k > 1:
        tokens = np.concatenate([combined[valid], *short_hashes[:-1]])
        owners = np.concatenate([doc[valid], *short_docs[:-1]])
    else:
        tokens, owners = combined[valid], doc[valid]
    order = np.argsort(owners, kind="stable")
    counts = np.bincount(owners, minlength=n_docs)
    row_offsets = np.zeros(n_docs + 1, np.uint64)
    np.cumsum(counts, out=row_offsets[1:])
    return _mix(tokens[order]), row_offsets


def signatures(texts: pa.Array, k: int, num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, num_perm) uint32 MinHash signatures, and a mask of texts with at least one shingle."""
    tokens, row_offsets = shingles(texts, k)
    if len(texts) == 0:
        return np.zeros((0, num_perm), np.uint32), np.zeros(0, bool)
    matrix = rensa.RMinHash.digest_matrix_from_flat_token_hashes(tokens, row_offsets, num_perm, seed)
    sig = np.fromiter(itertools.chain.from_iterable(matrix.to_rows()), np.uint32,
                      count=len(texts) * num_perm).reshape(len(texts), num_perm)
    return sig, np.diff(row_offsets) > 0


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(n, bands) uint64: band ``b`` folds signature values ``b*rows .. (b+1)*rows-1`` into one key."""
    block = sig[:, : bands * rows].astype(np.uint64).reshape(len(sig), bands, rows)
    key = np.broadcast_to(_mix(np.arange(1, bands + 1, dtype=np.uint64)), (len(sig), bands)).copy()
    for r in range(rows):
        key = _mix((key ^ block[:, :, r]) * _MUL)
    return key


def jaccard(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Estimated Jaccard similarity of paired signatures (rows of ``a`` and ``b``)."""
    return (a == b).mean(axis=1) if len(a) else np.zeros(0)
