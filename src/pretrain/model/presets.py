"""Named model sizes as Llama shapes (``model.preset``); explicit ``model.*`` keys still override them.

Sizes count the transformer blocks (non-embedding parameters); the embeddings add ``vocab x hidden``
(twice when untied). The 1b and 8b shapes are Llama 3.2 1B and Llama 3 8B; 125m/350m follow GPT-3's
small/medium widths with SwiGLU (intermediate ~ 8/3 hidden, a multiple of 256).

From 350m up the output head is untied from the input embedding (OLMo-2, Llama 3 8B, modded-nanoGPT): the two
then take their own learning rates and the head's gradient stops pulling the input table, at a cost in
parameters (vocab x hidden) that is small next to the blocks at those sizes. Below, tying is kept: there the
embedding is a large share of the model (half the quickstart's) and a second copy would dominate it.
"""

from __future__ import annotations

PRESETS: dict[str, dict[str, object]] = {
    "tiny": {"hidden_size": 96, "num_layers": 2, "num_heads": 4, "intermediate_size": 256},
    "20m": {"hidden_size": 512, "num_layers": 6, "num_heads": 8, "intermediate_size": 1536},
    "125m": {"hidden_size": 768, "num_layers": 12, "num_heads": 12, "intermediate_size": 2048},
    "350m": {"hidden_size": 1024, "num_layers": 24, "num_heads": 16, "intermediate_size": 2816,
             "tie_embeddings": False},
    "1b": {"hidden_size": 2048, "num_layers": 16, "num_heads": 32, "num_kv_heads": 8, "intermediate_size": 8192,
           "rope_theta": 500_000.0, "tie_embeddings": False},
    "8b": {"hidden_size": 4096, "num_layers": 32, "num_heads": 32, "num_kv_heads": 8, "intermediate_size": 14336,
           "rope_theta": 500_000.0, "tie_embeddings": False},
}
