"""The data engine: ingest, filter, dedup and tokenize, one shard at a time in Arrow record batches."""
