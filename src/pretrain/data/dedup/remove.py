"""Stage 4, per partition: copy the partition's documents minus its removals into its deduplicated shard.

Also counts what was removed by kind, and fills in the id, URL and first characters of any of its
documents that the cluster report chose as samples (image samples: the caption, original size and image hash).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pyarrow as pa

from pretrain.data.dedup import clusters, tables
from pretrain.data.dedup.plan import Plan
from pretrain.data.documents import SAMPLE_SCHEMA, SCHEMA, ShardWriter, iter_batches

SAMPLE_CHARS = 200


def remove_partition(plan: Plan, part: int) -> dict[str, Any]:
    """Write ``part``'s deduplicated shard; returns its stats, shard and sample documents (also saved)."""
    if (done := plan.done("remove", part)) is not None:
        return done.extra
    removals = tables.read(plan.removals_url(part))
    drop_rows = removals["row"].to_numpy()
    kinds = removals["kind"].to_numpy(zero_copy_only=False)
    wanted = {m["row"]: (i, j) for i, c in enumerate(clusters.load_report(plan)["samples"])
              for j, m in enumerate(c["members"]) if m["part"] == part}
    samples: list[dict[str, Any]] = []
    offset = 0
    with ShardWriter(plan.output_url(part), SAMPLE_SCHEMA if plan.images else SCHEMA) as writer:
        for shard in plan.filtered[part].shards:
            for batch in iter_batches(shard.url):
                rows = np.arange(offset, offset + batch.num_rows)
                offset += batch.num_rows
                table = pa.Table.from_batches([batch])
                for row in (r for r in wanted if offset - batch.num_rows <= r < offset):
                    doc = table.slice(row - rows[0], 1).to_pylist()[0]
                    samples.append({"cluster": wanted[row][0], "member": wanted[row][1], "id": doc["id"],
                                    "url": doc["url"], "source": doc["source"],
                                    "text": (doc["text"] or "")[:SAMPLE_CHARS], **_image_facts(doc)})
                writer.write_table(table.filter(pa.array(~np.isin(rows, drop_rows))))
        shard_out = writer.close()
    shard_out.meta = {"source": plan.source(part)}
    stats = {"documents_in": offset, "documents_out": shard_out.rows, "duplicates": len(drop_rows),
             "exact_duplicates": int((kinds == "exact").sum()), "fuzzy_duplicates": int((kinds == "fuzzy").sum())}
    if stats["documents_in"] - stats["documents_out"] != stats["duplicates"]:
        raise RuntimeError(f"{plan.removals_url(part)} names rows that partition {part} does not have")
    extra = {"stats": stats, "shard": dataclasses.asdict(shard_out), "samples": samples}
    plan.mark("remove", part, stats=stats, extra=extra)
    return extra


def _image_facts(doc: dict[str, Any]) -> dict[str, Any]:
    """An image sample's cluster member: its caption (the text), original size and content hash, never its bytes."""
    if "image_hash" not in doc:
        return {}
    return {"caption": (doc["text"] or "")[:SAMPLE_CHARS], "width": doc["width"], "height": doc["height"],
            "label": doc["label"], "image_hash": doc["image_hash"]}
