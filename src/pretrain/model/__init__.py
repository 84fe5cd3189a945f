"""Model construction from config (Hugging Face classes), parallelize(), Hugging Face export."""
