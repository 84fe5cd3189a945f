"""The dedup plan: the run order of the filtered partitions, the fingerprint, and where every stage writes.

Every stage reads the plan from ``dedup/plan.json`` under the run root, so a KFP task needs only the
recipe and its unit (a partition index, a prefix shard, a band). A document is named everywhere by
``(part, row)``: the partition's index in run order and the row's position in that partition's shards.
Each stage writes a small marker manifest last; a unit whose marker has the stage's fingerprint is done.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from pretrain import storage
from pretrain.config import DedupConfig, Recipe, fingerprint
from pretrain.data.readers.base import Partition
from pretrain.manifest import Manifest, reuse

PLAN_NAME = "plan.json"


@dataclasses.dataclass
class Plan:
    root: str
    fingerprint: str
    config: DedupConfig
    filtered: list[Manifest]  # the filter manifests, in run order: sources by name, partitions by key
    images: bool = False  # image samples: exact keys from image_hash, bands of the pHash (see ``images``)

    # --- layout -------------------------------------------------------------------------------
    def url(self, *parts: str) -> str:
        return storage.join(self.root, *parts)

    def source(self, part: int) -> str:
        return self.filtered[part].extra["partition"]["source"]

    def exact_url(self, part: int) -> str:
        """One partition's exact keys: row group ``k`` holds prefix shard ``k`` (read alone by its unit)."""
        return self.url("exact", "keys", f"p-{part:05d}.parquet")

    def exact_dups_url(self, prefix: int) -> str:
        return self.url("exact", "duplicates", f"prefix-{prefix:04d}.parquet")

    def signatures_url(self, part: int) -> str:
        """One partition's rows, lengths, signatures and one column of keys per LSH band (read by column)."""
        return self.url("signatures", f"p-{part:05d}.parquet")

    def pairs_url(self, band: int, shard: int = 0) -> str:
        return self.url("pairs", f"band-{band:03d}-{shard:04d}.parquet")

    def removals_url(self, part: int) -> str:
        return self.url("clusters", "removals", f"p-{part:05d}.parquet")

    def output_url(self, part: int) -> str:
        return self.url(f"part-{part:05d}.parquet")

    def marker_url(self, stage: str, unit: int | str = "all") -> str:
        return self.url("_done", stage, f"{unit}.json")

    # --- idempotence ----------------------------------------------------------------------------
    def stage_fingerprint(self, stage: str, unit: int | str = "all") -> str:
        return fingerprint(self.fingerprint, stage, unit)

    def done(self, stage: str, unit: int | str = "all") -> Manifest | None:
        return reuse(self.marker_url(stage, unit), self.stage_fingerprint(stage, unit))

    def mark(self, stage: str, unit: int | str = "all", stats: dict[str, Any] | None = None,
             extra: dict[str, Any] | None = None, shards: list | None = None) -> Manifest:
        marker = Manifest(kind=f"dedup-{stage}", root=self.root, fingerprint=self.stage_fingerprint(stage, unit),
                          shards=shards or [], stats=stats or {}, extra=extra or {})
        marker.save(self.marker_url(stage, unit))
        return marker

    # --- units -----------------------------------------------------------------------------------
    @property
    def partitions(self) -> list[int]:
        return list(range(len(self.filtered)))

    @property
    def bands(self) -> int:
        """LSH bands: the config's for texts; ``image_distance + 1`` pHash chunks for images."""
        return self.config.image_distance + 1 if self.images else self.config.bands

    def bucket_units(self) -> list[str]:
        """The bucket stage's units: ``exact:<prefix>`` per prefix shard, ``band:<b>:<s>`` per LSH band and key
        range (``band_shards`` of them)."""
        cfg = self.config
        units = [f"exact:{k}" for k in range(cfg.prefix_shards)] if cfg.exact else []
        if cfg.fuzzy:
            units += [f"band:{b}:{s}" for b in range(self.bands) for s in range(cfg.band_shards)]
        return units

    def to_json(self) -> str:
        return json.dumps({"root": self.root, "fingerprint": self.fingerprint, "config": self.config.model_dump(),
                           "filtered": [json.loads(m.to_json()) for m in self.filtered], "images": self.images},
                          sort_keys=True)


def make_plan(recipe: Recipe, filtered: list[Manifest]) -> Plan:
    """Order the filtered partitions, fingerprint them with the dedup config, and save the plan."""
    ordered = sorted(filtered, key=lambda m: (m.extra["partition"]["source"],
                                              Partition.from_dict(m.extra["partition"]).key))
    images = recipe.modality != "text"
    fp = fingerprint(recipe.dedup.model_dump(), [m.fingerprint for m in ordered], *(["images"] if images else []))
    plan = Plan(root=recipe.url("dedup"), fingerprint=fp, config=recipe.dedup, filtered=ordered, images=images)
    url = plan.url(PLAN_NAME)
    try:
        same = load_plan(recipe).fingerprint == fp
    except FileNotFoundError:
        same = False
    if not same:
        storage.write_text(url, plan.to_json())
    return plan


def load_plan(recipe: Recipe) -> Plan:
    data = json.loads(storage.read_text(storage.join(recipe.url("dedup"), PLAN_NAME)))
    return Plan(root=data["root"], fingerprint=data["fingerprint"], config=DedupConfig(**data["config"]),
                filtered=[Manifest.from_dict(m) for m in data["filtered"]], images=bool(data.get("images", False)))
