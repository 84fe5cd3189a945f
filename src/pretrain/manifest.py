"""The small JSON manifest a step outputs instead of its bulk data.

It names the kind of data, the root URL, the shards (URL, rows or tokens, bytes, checksum), merged
stats and the config section that produced it. Written last and atomically, it is also the step's
commit marker: a step whose manifest exists with the same fingerprint is finished and is reused.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from typing import Any

from pretrain import storage

MANIFEST_NAME = "_MANIFEST.json"


@dataclasses.dataclass
class Shard:
    url: str
    rows: int
    bytes: int
    checksum: str = ""
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Manifest:
    kind: str
    root: str
    fingerprint: str
    shards: list[Shard] = dataclasses.field(default_factory=list)
    stats: dict[str, Any] = dataclasses.field(default_factory=dict)
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True, default=str)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        data = dict(data)
        data["shards"] = [Shard(**s) for s in data.get("shards", [])]
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        return cls.from_dict(json.loads(text))

    @classmethod
    def load(cls, url: str) -> Manifest:
        if not url.endswith(".json"):
            url = storage.join(url, MANIFEST_NAME)
        return cls.from_json(storage.read_text(url))

    def save(self, url: str | None = None) -> str:
        url = url or storage.join(self.root, MANIFEST_NAME)
        storage.write_text(url, self.to_json())
        return url


def reuse(url: str, fingerprint: str) -> Manifest | None:
    """The finished output at ``url`` (a manifest file or its folder) if made from the same inputs."""
    if not url.endswith(".json"):
        url = storage.join(url, MANIFEST_NAME)
    try:
        found = Manifest.load(url)
    except (FileNotFoundError, json.JSONDecodeError, TypeError):
        return None
    return found if found.fingerprint == fingerprint else None


def merge_stats(stats: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Add up numeric stats (nested dicts too), as counters from parallel shards are merged."""
    total: dict[str, Any] = {}
    for item in stats:
        for key, value in item.items():
            if isinstance(value, dict):
                total[key] = merge_stats([total.get(key, {}), value])
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                total[key] = total.get(key, 0) + value
    return total
