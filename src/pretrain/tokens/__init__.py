"""Token shards: the format (``format``), on-demand S3 reads (``remote``), the loader (``loader``), export.

The format ``pretrain-tokens/1`` and the loader's semantics are described in ``format`` and ``loader``.
"""

from pretrain.tokens.format import (
    FORMAT,
    ShardError,
    TokenShard,
    TokenShardWriter,
    open_shard,
    read_header,
    token_dtype,
    verify_shard,
    verify_shards,
)
from pretrain.tokens.loader import (
    Batch,
    SequentialWindows,
    ShardRef,
    TokenLoader,
    document_ids,
    mixture_epochs,
    permute,
    shard_refs,
    split_urls,
)
from pretrain.tokens.megatron import export_megatron

__all__ = ["FORMAT", "Batch", "SequentialWindows", "ShardError", "ShardRef", "TokenLoader", "TokenShard",
           "TokenShardWriter", "document_ids", "export_megatron", "mixture_epochs", "open_shard", "permute",
           "read_header", "shard_refs", "split_urls", "token_dtype", "verify_shard", "verify_shards"]
