"""The run's tokenizer: train it on a sample drawn across sources, save and load Hugging Face folders,
and encode documents fast (tiktoken where it is exact, else ``tokenizers``)."""

from pretrain.data.tokenizer.encoder import Encoder, EncoderError, single_threaded
from pretrain.data.tokenizer.load import (
    TokenizerError,
    load_tokenizer,
    save_tokenizer,
    special_ids,
    tokenizer_bytes,
    tokenizer_config,
    tokenizer_hash,
    tokenizer_source,
)
from pretrain.data.tokenizer.train import EOS, MASK, PAD, SPECIAL_TOKENS, train_tokenizer, training_sample

__all__ = [
    "EOS", "MASK", "PAD", "SPECIAL_TOKENS", "Encoder", "EncoderError", "TokenizerError", "load_tokenizer",
    "save_tokenizer", "single_threaded", "special_ids", "tokenizer_bytes", "tokenizer_config", "tokenizer_hash",
    "tokenizer_source", "train_tokenizer", "training_sample",
]
