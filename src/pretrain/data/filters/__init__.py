"""Filter: quality rules over a documents shard, grouped in profiles per kind of source.

One module per rule family (gopher, c4, fineweb, code, language, gibberish, toxic, pii), the shared
segmented document and rule contract (base), the profiles (profiles), the rules of image samples and their
captions (images) and the step itself (step), which picks the image rules for a source with images.
"""

from __future__ import annotations

from pretrain.data.filters.step import filter_shard

__all__ = ["filter_shard"]
