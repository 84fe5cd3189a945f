"""pretrain: from raw data to a base language model. The core library; it never imports kfp."""

__version__ = "0.1.0"
