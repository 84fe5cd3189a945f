"""Image sources: a folder of images, WebDataset shards, tables with an image field, and the shapes set.

Bad input (a truncated JPEG or PNG, a zero-byte image, a 20000x20000 PNG, a non-image with an image
suffix, a tar key with a caption but no image, a cut or damaged tar) is skipped and counted with its
reason, the ledger (records == written + skipped) holds, and the run goes on.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from test_images_decode import png_bomb

from pretrain import storage
from pretrain.config import ImagesConfig, SourceConfig, resolve, validate
from pretrain.data import images
from pretrain.data.documents import SAMPLE_SCHEMA
from pretrain.data.ingest import ingest
from pretrain.data.plan import plan
from pretrain.data.readers import reader
from pretrain.data.readers.base import ReadStats
from pretrain.data.samples import shapes


def png(color=(200, 30, 30), size=(48, 40)) -> bytes:
    buf = io.BytesIO()
    img = Image.new("RGB", size, color)
    img.paste((20, 20, 20), (5, 5, 15, 15))
    img.save(buf, "PNG")
    return buf.getvalue()


def jpeg(size=(120, 90)) -> bytes:
    buf = io.BytesIO()
    Image.linear_gradient("L").resize(size).convert("RGB").save(buf, "JPEG")
    return buf.getvalue()


BAD = {  # file name -> (bytes, the reason it is skipped with)
    "cut.jpg": (jpeg()[:400], "undecodable_image"),
    "cut.png": (png(size=(200, 200))[:300], "undecodable_image"),
    "zero.png": (b"", "empty_image"),
    "bomb.png": (png_bomb(20000), "too_many_pixels"),
    "notes.jpg": (b"not an image at all, only text\n", "undecodable_image"),
}


FIRST = shapes.render_one(0, seed=3)[2]  # the label (sub-folder) of the folder fixture's first image


def source(fmt: str, uri: str = "/nowhere", **kw) -> SourceConfig:
    return SourceConfig(name="imgs", format=fmt, uri=uri, **kw)


def read_all(src: SourceConfig, location: str, cfg: ImagesConfig | None = None) -> tuple[list[dict], ReadStats]:
    mod = reader(src.format)
    stats = ReadStats()
    rows = [r for p in mod.plan(src, location) for r in mod.read(src, p, stats, images=cfg or ImagesConfig(size=32))]
    assert stats.records == len(rows) + sum(stats.skipped.values())  # the ledger
    return rows, stats


def image_recipe(tmp_path, **src):
    """A real recipe with one image source (an image-text objective, as the recipe requires)."""
    tree = {"name": "imgs", "run_root": str(tmp_path / "run"), "train": {"objective": "image_text_contrastive"},
            "images": {"size": 32}, "sources": [{"name": "imgs", **src}]}
    return resolve(validate(tree))


def ingest_all(recipe) -> tuple[list, pq.Table]:
    manifests = [ingest(recipe, p) for p in plan(recipe).extra["partitions"]]
    table = pq.read_table([m.shards[0].url for m in manifests]) if len(manifests) > 1 else pq.read_table(
        manifests[0].shards[0].url)
    return manifests, table


# -- a folder of images ------------------------------------------------------------------------------------------

@pytest.fixture
def folder(tmp_path) -> Path:
    root = Path(shapes.write_folder(tmp_path / "imgs", 24, seed=3))
    first = FIRST + "/00000"
    (root / f"{first}.txt").unlink()
    (root / f"{first}.json").write_text(json.dumps({"caption": "from the json", "photographer": "ann"}))
    (root / "bad").mkdir()
    for name, (data, _) in BAD.items():
        (root / "bad" / name).write_bytes(data)
    (root / "bad" / "lonely.txt").write_text("a caption without an image is no record")
    (root / "bad" / "broken.png").write_bytes(png())
    (root / "bad" / "broken.json").write_text("{not json")
    (root / ".hidden.png").write_bytes(png())
    return root


def test_a_folder_yields_samples_with_captions_labels_and_meta_and_counts_every_bad_file(folder):
    src = source("images", str(folder), label_field="folder", partitions=3)
    rows, stats = read_all(src, str(folder))
    assert stats.records == 24 + len(BAD) + 1  # every image file; not the .txt/.json, not hidden files
    assert len(rows) == 25 and not stats.files_skipped
    expected = {}
    for _, why in BAD.values():
        expected[why] = expected.get(why, 0) + 1
    assert dict(stats.skipped) == expected
    assert stats.repaired == {"invalid_caption_json": 1}
    by_id = {r["source_id"]: r for r in rows}
    assert len(by_id) == 25 and len({r["id"] for r in rows}) == 25
    first = by_id[f"{FIRST}/00000.png"]
    assert first["text"] == "from the json" and json.loads(first["meta"]) == {"photographer": "ann"}
    assert first["label"] == FIRST and first["url"] == str(folder / FIRST / "00000.png")
    one = next(r for r in rows if r["source_id"].startswith("star/"))
    stem = one["source_id"].rsplit(".", 1)[0]
    assert one["text"] == (folder / f"{stem}.txt").read_text() and one["text"].startswith("a ")
    assert by_id["bad/broken.png"]["text"] == "" and by_id["bad/broken.png"]["label"] == "bad"
    assert all(Image.open(io.BytesIO(r["image"])).size in ((32, 32), (38, 32)) for r in rows)
    assert {r["width"] for r in rows} == {64, 48}
    assert {e["reason"] for e in stats.errors} >= {"undecodable_image", "empty_image", "too_many_pixels"}


def test_without_label_field_there_is_no_label_and_include_exclude_select_images(folder):
    src = source("images", str(folder), exclude=["bad/*"], include=["*.png"])
    rows, stats = read_all(src, str(folder))
    assert len(rows) == stats.records == 24 and {r["label"] for r in rows} == {""}


def test_buckets_split_the_folder_and_a_new_file_changes_only_its_own(folder):
    src = source("images", str(folder), partitions=4)
    mod = reader("images")
    parts = mod.plan(src, str(folder))
    assert len(parts) == 4 and len({p.key for p in parts}) == 4

    def ids_by_bucket():
        out = []
        for p in parts:
            stats = ReadStats()
            out.append(sorted(r["source_id"] for r in mod.read(src, p, stats, images=ImagesConfig(size=16))))
        return out

    before = ids_by_bucket()
    assert sum(map(len, before)) == 25 and all(before)  # every image in exactly one bucket
    (folder / "zz-new.png").write_bytes(png((1, 2, 3)))
    after = ids_by_bucket()
    changed = [i for i in range(4) if before[i] != after[i]]
    assert len(changed) == 1 and set(after[changed[0]]) - set(before[changed[0]]) == {"zz-new.png"}


def test_a_missing_folder_or_one_without_images_fails_at_plan(tmp_path):
    from pretrain.data.readers.base import InputError

    with pytest.raises(InputError, match="not found"):
        reader("images").plan(source("images"), str(tmp_path / "absent"))
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("hello")
    with pytest.raises(InputError, match="no image files"):
        reader("images").plan(source("images"), str(tmp_path / "texts"))


def test_ingest_writes_a_samples_shard_that_decodes_back_at_the_recipe_size(folder, tmp_path):
    recipe = image_recipe(tmp_path, format="images", uri=str(folder), label_field="folder", partitions=2)
    manifests, table = ingest_all(recipe)
    assert table.schema.equals(SAMPLE_SCHEMA) and table.num_rows == 25
    stats = [m.stats for m in manifests]
    assert sum(s["images"] for s in stats) == sum(s["documents"] for s in stats) == 25
    assert sum(s["records"] for s in stats) == 25 + sum(sum(s["skipped"].values()) for s in stats)
    assert sum(s["image_bytes"] for s in stats) == sum(len(b) for b in table.column("image").to_pylist())
    assert sum(s["chars"] for s in stats) == sum(len(t) for t in table.column("text").to_pylist())
    assert sum(s["skipped"].get("too_many_pixels", 0) for s in stats) == 1
    for data, width, height in zip(*(table.column(c).to_pylist() for c in ("image", "width", "height")), strict=True):
        img = Image.open(io.BytesIO(data))
        img.load()
        assert min(img.size) == 32 and img.format == "PNG" and (width, height) in ((64, 64), (48, 40))
    assert set(table.column("label").to_pylist()) == {*shapes.SHAPES, "bad"}
    # a different images section is a different output: not reused
    again = image_recipe(tmp_path, format="images", uri=str(folder), label_field="folder", partitions=2)
    again.images.size = 16
    part = plan(again).extra["partitions"][0]
    assert ingest(again, part).fingerprint != manifests[0].fingerprint


def test_builtin_shapes_is_built_once_under_the_run_root_with_folder_labels(tmp_path):
    recipe = image_recipe(tmp_path, format="images", uri="builtin:shapes", builtin_images=40)
    _manifests, table = ingest_all(recipe)
    assert table.num_rows == 40 and set(table.column("label").to_pylist()) == set(shapes.SHAPES)
    assert all(t.startswith("a ") for t in table.column("text").to_pylist())
    marker = Path(recipe.url("corpus", "imgs", ".built.json"))
    stamp = marker.stat().st_mtime_ns
    plan(recipe)
    assert marker.stat().st_mtime_ns == stamp  # not rebuilt
    recipe.sources[0].builtin_images = 20
    assert plan(recipe) and len(list(Path(recipe.url("corpus", "imgs")).rglob("*.png"))) == 20  # rebuilt, smaller


def test_max_documents_caps_an_image_source(folder, tmp_path):
    recipe = image_recipe(tmp_path, format="images", uri=str(folder), max_documents=5, partitions=2)
    manifests, table = ingest_all(recipe)
    assert table.num_rows <= 6 and all(m.stats["documents"] <= 3 for m in manifests)


def test_images_on_s3(folder, tmp_path, s3):
    for path in folder.rglob("*"):
        if path.is_file():
            storage.write_bytes(f"{s3}/imgs/{path.relative_to(folder).as_posix()}", path.read_bytes())
    rows, stats = read_all(source("images", f"{s3}/imgs", label_field="folder"), f"{s3}/imgs")
    assert len(rows) == 25 and stats.skipped["too_many_pixels"] == 1 and stats.skipped["empty_image"] == 1
    assert next(r for r in rows if r["source_id"] == f"{FIRST}/00000.png")["text"] == "from the json"
    recipe = image_recipe(tmp_path, format="images", uri=f"{s3}/imgs", label_field="folder")
    _, table = ingest_all(recipe)
    assert table.num_rows == 25 and table.schema.equals(SAMPLE_SCHEMA)
    shard = Path(shapes.write_webdataset(tmp_path / "wds", 5, seed=1, gzip=True)) / "shapes-00000.tar.gz"
    storage.write_bytes(f"{s3}/wds/{shard.name}", shard.read_bytes())
    rows, stats = read_all(source("webdataset", f"{s3}/wds", label_field="cls"), f"{s3}/wds")
    assert len(rows) == 5 and rows[0]["url"] == f"{s3}/wds/{shard.name}" and rows[0]["label"] in shapes.SHAPES


# -- WebDataset shards ------------------------------------------------------------------------------------------

def tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_webdataset_shards_group_members_by_key_and_count_keys_without_an_image(tmp_path):
    root = Path(shapes.write_webdataset(tmp_path / "wds", 20, seed=1, per_shard=8))
    assert len(list(root.glob("*.tar"))) == 3
    (root / "extra.tar").write_bytes(tar_bytes([
        ("a/0001.jpg", jpeg()), ("a/0001.json", json.dumps({"text": "json caption", "cls": 7, "who": "x"}).encode()),
        ("a/0002.txt", b"a caption but no image"),  # no_image
        ("a/0003.png", png()), ("a/0003.txt", b"plain caption "), ("a/0003.seg.png", png((0, 0, 0))),
        ("a/0004.png", BAD["cut.png"][0]), ("a/0004.txt", b"cut"),
        ("a/0005.png", BAD["bomb.png"][0]),
        ("a/0006.webp", b""),
        ("README", b"no extension: not a sample"), ("._0007.png", png()),
    ]))
    (root / "notes.md").write_text("not a shard")
    rows, stats = read_all(source("webdataset", str(root), label_field="cls"), str(root))
    assert len(rows) == 22 and stats.records == 20 + 6
    assert dict(stats.skipped) == {"no_image": 1, "undecodable_image": 1, "too_many_pixels": 1, "empty_image": 1}
    by_id = {r["source_id"]: r for r in rows}
    # no .cls member: the json's own "cls" field is the label (and leaves meta)
    assert by_id["extra.tar/a/0001"]["text"] == "json caption" and by_id["extra.tar/a/0001"]["label"] == "7"
    assert json.loads(by_id["extra.tar/a/0001"]["meta"]) == {"key": "a/0001", "who": "x"}
    assert by_id["extra.tar/a/0003"]["text"] == "plain caption"
    assert Image.open(io.BytesIO(by_id["extra.tar/a/0003"]["image"])).getpixel((10, 20))[0] > 100  # not seg.png
    shape = by_id["shapes-00000.tar/000003"]
    assert shape["label"] in shapes.SHAPES and shape["text"].startswith("a ") and shape["url"].endswith("00000.tar")
    other, _ = read_all(source("webdataset", str(root), label_field="who"), str(root))
    assert next(r for r in other if r["source_id"] == "extra.tar/a/0001")["label"] == "x"


def test_a_cut_or_damaged_shard_keeps_what_came_before_and_counts_the_file(tmp_path):
    members = [(f"{i:04d}.{ext}", png((i, 0, 0)) if ext == "png" else b"caption %d" % i)
               for i in range(6) for ext in ("png", "txt")]
    whole = tar_bytes(members)
    root = tmp_path / "wds"
    root.mkdir()
    offsets = []
    with tarfile.open(fileobj=io.BytesIO(whole)) as tar:
        offsets = [m.offset for m in tar.getmembers()]
    (root / "a-cut-in-data.tar").write_bytes(whole[: offsets[7] + 600])  # inside key 3's png
    (root / "b-cut-at-header.tar").write_bytes(whole[: offsets[8] + 100])  # inside key 4's first header
    garbage = bytearray(whole)
    garbage[offsets[10]: offsets[10] + 512] = b"\x07" * 512  # key 5's header: garbage
    (root / "c-garbage.tar").write_bytes(bytes(garbage))
    (root / "d-not-a-tar.tar").write_bytes(b"hello, I am not a tar archive" * 40)
    (root / "e-empty.tar").write_bytes(b"")
    import gzip

    (root / "f-cut.tar.gz").write_bytes(gzip.compress(whole)[: len(gzip.compress(whole)) // 2])
    (root / "g-whole.tgz").write_bytes(gzip.compress(whole))
    src = source("webdataset", str(root))
    mod = reader("webdataset")
    got = {}
    for part in mod.plan(src, str(root)):
        stats = ReadStats()
        rows = list(mod.read(src, part, stats, images=ImagesConfig(size=16)))
        assert stats.records == len(rows) + sum(stats.skipped.values())
        got[part.rel] = (len(rows), dict(stats.files_skipped))
    assert got["a-cut-in-data.tar"] == (3, {"truncated": 1})
    assert got["b-cut-at-header.tar"] == (4, {"truncated": 1})
    assert got["c-garbage.tar"] == (5, {"corrupt": 1})
    assert got["d-not-a-tar.tar"] == (0, {"corrupt": 1})
    assert got["e-empty.tar"] == (0, {"empty": 1})
    assert got["f-cut.tar.gz"][1] == {"truncated": 1} and got["f-cut.tar.gz"][0] < 6
    assert got["g-whole.tgz"] == (6, {})


def test_webdataset_through_ingest(tmp_path):
    root = shapes.write_webdataset(tmp_path / "wds", 12, seed=2, per_shard=5, gzip=True)
    recipe = image_recipe(tmp_path, format="webdataset", uri=root, label_field="cls")
    manifests, table = ingest_all(recipe)
    assert len(manifests) == 3 and table.num_rows == 12 and table.schema.equals(SAMPLE_SCHEMA)
    assert set(table.column("label").to_pylist()) <= set(shapes.SHAPES)


# -- tables with an image field ---------------------------------------------------------------------------------

def test_jsonl_with_image_paths_relative_to_the_file(tmp_path):
    path = Path(shapes.write_jsonl(tmp_path / "tbl" / "data.jsonl", 10, seed=4))
    (tmp_path / "tbl" / "abs.png").write_bytes(png())
    with path.open("a") as f:
        f.write(json.dumps({"id": "gone", "image": "images/missing.png", "text": "x"}) + "\n")
        f.write(json.dumps({"id": "nofield", "text": "x"}) + "\n")
        f.write(json.dumps({"id": "abs", "image": str(tmp_path / "tbl" / "abs.png"), "label": 3}) + "\n")
        f.write(json.dumps({"id": "hf", "image": {"bytes": None, "path": "abs.png"}, "text": " cap "}) + "\n")
    src = source("jsonl", str(tmp_path / "tbl"), image_field="image", label_field="label", id_field="id",
                 meta_fields=["id"])
    rows, stats = read_all(src, str(tmp_path / "tbl"))  # the PNGs beside the table are not read as tables
    assert len(rows) == 12 and dict(stats.skipped) == {"no_image": 2}
    by_id = {r["source_id"]: r for r in rows}
    assert by_id["abs"]["text"] == "" and by_id["abs"]["label"] == "3" and by_id["hf"]["text"] == "cap"
    assert by_id["shape-00001"]["url"] == str(tmp_path / "tbl" / "images" / "00001.png")
    assert by_id["shape-00001"]["label"] in shapes.SHAPES and json.loads(by_id["hf"]["meta"]) == {"id": "hf"}


def test_parquet_with_image_bytes_and_a_bad_row(tmp_path):
    import pyarrow as pa

    path = shapes.write_parquet(tmp_path / "pq" / "a.parquet", 9, seed=5, row_group_size=4)
    table = pq.read_table(path)
    bad = pa.table({"id": ["bad", "none", "zero"], "image": pa.array([BAD["cut.jpg"][0], None, b""], pa.binary()),
                    "text": ["x", None, "y"], "label": ["circle", None, None]})
    pq.write_table(pa.concat_tables([table, bad]), path, row_group_size=4)
    rows, stats = read_all(source("parquet", str(tmp_path / "pq"), image_field="image", label_field="label",
                                  id_field="id"), str(tmp_path / "pq"))
    assert len(rows) == 9 and dict(stats.skipped) == {"undecodable_image": 1, "no_image": 1, "empty_image": 1}
    assert [r["source_id"] for r in rows] == [f"shape-{i:05d}" for i in range(9)]
    no_field, stats = read_all(source("parquet", str(tmp_path / "pq"), image_field="picture"), str(tmp_path / "pq"))
    assert not no_field and dict(stats.skipped) == {"no_image": 12}


def test_hf_dataset_with_an_image_feature(tmp_path):
    datasets = pytest.importorskip("datasets")
    items = list(shapes.render(6, seed=6))
    ds = datasets.Dataset.from_dict({"img": [{"bytes": b, "path": None} for b, _, _ in items],
                                     "caption": [c for _, c, _ in items], "y": [lab for _, _, lab in items]},
                                    features=datasets.Features({"img": datasets.Image(), "caption": datasets.Value(
                                        "string"), "y": datasets.Value("string")}))
    ds.save_to_disk(str(tmp_path / "hf"))
    rows, _stats = read_all(source("hf", str(tmp_path / "hf"), image_field="img", text_field="caption",
                                  label_field="y"), str(tmp_path / "hf"))
    assert [(r["text"], r["label"]) for r in rows] == [(c, lab) for _, c, lab in items]


def test_a_text_source_is_untouched_by_image_support(tmp_path):
    from pretrain.data.samples import tables

    path = tables.write_jsonl(tmp_path / "t" / "a.jsonl", 5)
    rows, _ = read_all(source("jsonl", str(Path(path).parent), label_field="module"), str(Path(path).parent))
    assert len(rows) == 5 and "image" not in rows[0]


# -- the shapes set ---------------------------------------------------------------------------------------------

def test_shapes_are_deterministic_and_a_prefix_of_a_longer_set():
    a = list(shapes.render(12, seed=7))
    assert a == list(shapes.render(12, seed=7)) and a[:5] == list(shapes.render(5, seed=7))
    assert [x[0] for x in a] != [x[0] for x in shapes.render(12, seed=8)]
    img, caption, label = shapes.render_one(3, seed=7, size=256)
    assert img.size == (256, 256) and caption.split()[3] == label


def test_shapes_set_has_many_captions_balanced_labels_and_almost_no_near_duplicates():
    """2048 images: no exact duplicate, and under 2% with a pHash neighbour within distance 4 (measured: 0.4%).

    The hashes are the decoder's: at 64 px the stored pixels are the rendered ones (checked on the first)."""
    items = [shapes.render_one(i, seed=0) for i in range(2048)]
    assert len({c for _, c, _ in items}) >= 150 and len(shapes.captions()) == 576
    counts = np.unique([lab for _, _, lab in items], return_counts=True)[1]
    assert len(counts) == 4 and counts.min() >= 500
    assert len({img.tobytes() for img, _, _ in items}) == 2048
    hashes = np.array([images.phash(img) for img, _, _ in items], dtype=np.int64)
    assert images.decode(next(shapes.render(1, seed=0))[0], ImagesConfig(size=64)).phash == hashes[0]
    xor = hashes.view(np.uint64)[:, None] ^ hashes.view(np.uint64)[None, :]
    ones = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).sum(1).astype(np.uint8)
    bits = ones[xor.view(np.uint8)].reshape(2048, 2048, 8).sum(-1)
    np.fill_diagonal(bits, 64)
    near = float((bits <= 4).any(axis=1).mean())
    assert near < 0.02, near
