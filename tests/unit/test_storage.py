from __future__ import annotations

from pathlib import Path

import pytest

from pretrain import storage


def test_write_read_list(root):
    storage.write_json(storage.join(root, "a", "x.json"), {"k": 1})
    storage.write_text(storage.join(root, "a", "y.txt"), "hello")
    assert storage.read_json(storage.join(root, "a", "x.json")) == {"k": 1}
    assert storage.read_text(storage.join(root, "a", "y.txt")) == "hello"
    assert storage.listdir(storage.join(root, "a")) == ["x.json", "y.txt"]
    assert storage.listdir(storage.join(root, "missing")) == []
    assert storage.exists(storage.join(root, "a", "x.json"))
    storage.remove(storage.join(root, "a"))
    assert not storage.exists(storage.join(root, "a", "x.json"))


def test_failed_write_leaves_old_content_and_no_partial_file(root):
    url = storage.join(root, "data.bin")
    storage.write_bytes(url, b"complete")
    with pytest.raises(KeyboardInterrupt), storage.atomic_path(url) as tmp:
        Path(tmp).write_bytes(b"half")
        raise KeyboardInterrupt  # Ctrl-C in the middle of a write
    assert storage.read_bytes(url) == b"complete"
    assert storage.listdir(root) == ["data.bin"]  # no temporary file left behind


def test_failed_first_write_creates_nothing(root):
    url = storage.join(root, "new.bin")
    with pytest.raises(RuntimeError), storage.atomic_path(url) as tmp:
        Path(tmp).write_bytes(b"half")
        raise RuntimeError("disk full")
    assert not storage.exists(url)


def test_local_copy_and_upload_dir(root, tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("A")
    (src / "sub" / "b.txt").write_text("B")
    dest = storage.join(root, "folder")
    storage.upload_dir(str(src), dest)
    local = Path(storage.local_copy(dest))
    assert (local / "a.txt").read_text() == "A"
    assert (local / "sub" / "b.txt").read_text() == "B"


def test_s3_objects_are_visible_to_a_plain_s3_client(s3):
    from minio import Minio

    storage.write_text(f"{s3}/k/obj.txt", "via fsspec")
    import os
    from urllib.parse import urlparse

    ep = urlparse(os.environ["AWS_ENDPOINT_URL"])
    client = Minio(ep.netloc, access_key="testing", secret_key="testing", secure=False)
    bucket = s3[len("s3://"):]
    assert client.get_object(bucket, "k/obj.txt").read() == b"via fsspec"


def test_concurrent_local_copies_of_one_folder(s3, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    for i in range(20):
        storage.write_text(f"{s3}/shared/f{i}.txt", str(i))
    with ThreadPoolExecutor(4) as pool:
        paths = list(pool.map(lambda _: storage.local_copy(f"{s3}/shared", str(tmp_path / "c")), range(4)))
    assert len(set(paths)) == 1
    assert sorted(p.name for p in Path(paths[0]).iterdir()) == sorted(f"f{i}.txt" for i in range(20))
    assert [p.name for p in Path(paths[0]).parent.iterdir()] == ["shared"]  # no partial copies left
