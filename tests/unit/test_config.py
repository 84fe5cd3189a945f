from __future__ import annotations

import os

import pytest

from pretrain.config import RecipeError, bundled_recipes, fingerprint, load_recipe, preflight, validate


def test_bundled_recipes_load_and_resolve(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert {"quickstart", "tiny"} <= set(bundled_recipes())
    recipe = load_recipe()  # no recipe = the quickstart
    assert recipe.name == "quickstart"
    assert recipe.root == str(tmp_path / "runs" / "quickstart")
    assert recipe.url("tokens") == os.path.join(recipe.root, "tokens")


def test_overrides_apply_with_types_and_list_items():
    recipe = load_recipe("tiny", ["train.max_steps=7", "sources.1.partitions=3", "train.precision=bf16",
                                  "run_root=s3://b/runs/x", "evaluate.prompts=[a, b]"])
    assert recipe.train.max_steps == 7
    assert recipe.sources[1].partitions == 3
    assert recipe.train.precision == "bf16"
    assert recipe.root == "s3://b/runs/x"
    assert recipe.evaluate.prompts == ["a", "b"]


@pytest.mark.parametrize(("override", "key"), [
    ("train.max_stepz=3", "train.max_stepz"),           # unknown key
    ("train.max_steps=many", "train.max_steps"),        # wrong type
    ("train.max_steps=0", "train.max_steps"),           # out of range
    ("split.val_fraction=1.5", "split.val_fraction"),   # out of range
    ("sources.0.format=pdf", "sources[0].format"),      # not an allowed value
    ("model.num_heads=5", "model"),                     # hidden_size not a multiple of heads
])
def test_bad_values_fail_naming_the_key(override, key):
    with pytest.raises(RecipeError) as err:
        load_recipe("tiny", [override])
    assert key in str(err.value)


def test_override_into_missing_list_item_is_an_error():
    with pytest.raises(RecipeError, match=r"sources\.9"):
        load_recipe("tiny", ["sources.9.partitions=2"])


def test_unknown_builtin_and_duplicate_sources():
    with pytest.raises(RecipeError, match="unknown builtin"):
        validate({"name": "x", "sources": [{"name": "a", "format": "code", "uri": "builtin:nope"}]})
    with pytest.raises(RecipeError, match="unique"):
        validate({"name": "x", "sources": [{"name": "a", "format": "code", "uri": "/"},
                                           {"name": "a", "format": "code", "uri": "/"}]})


def test_missing_recipe_file_and_bad_yaml(tmp_path):
    with pytest.raises(RecipeError, match="not found"):
        load_recipe(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(RecipeError, match="YAML"):
        load_recipe(str(bad))


def test_preflight_missing_source_path(tmp_path):
    recipe = load_recipe("tiny", [f"run_root={tmp_path}/run", f"sources.0.uri={tmp_path}/absent"])
    with pytest.raises(RecipeError, match=r"sources\[0\]\.uri: .*absent does not exist"):
        preflight(recipe)


def test_preflight_unreachable_s3_endpoint(monkeypatch):
    from pretrain.data.samples.s3server import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    recipe = load_recipe("tiny", ["run_root=s3://bucket/runs/tiny"])
    with pytest.raises(Exception, match=r"s3://bucket/runs/tiny: S3 endpoint http://127.0.0.1:\d+ is unreachable"):
        preflight(recipe)


def test_preflight_s3_ok_creates_bucket(s3):
    recipe = load_recipe("tiny", [f"run_root={s3}/runs/tiny"])
    preflight(recipe)


def test_fingerprint_is_stable_and_sensitive():
    a = load_recipe("tiny")
    b = load_recipe("tiny", ["filter.min_chars=1"])
    assert fingerprint(a.filter.model_dump()) == fingerprint(load_recipe("tiny").filter.model_dump())
    assert fingerprint(a.filter.model_dump()) != fingerprint(b.filter.model_dump())


def _image_recipe(**train):
    return {"name": "pics", "sources": [{"name": "shapes", "format": "images", "uri": "builtin:shapes"}],
            "train": {"objective": "image_text_contrastive", **train}}


def test_image_objectives_pick_their_model_and_defaults():
    clip = validate(_image_recipe())
    assert (clip.modality, clip.model.architecture, clip.model.qk_norm) == ("image_text", "clip", False)
    assert (clip.train.optimizer, clip.train.schedule, clip.train.lr) == ("adamw", "cosine", 1e-3)
    assert clip.sources[0].has_images and clip.sources[0].profile == "caption"
    vit = validate(_image_recipe(objective="image_contrastive", lr=3e-4, optimizer="muon"))
    assert (vit.modality, vit.model.architecture) == ("image", "vit")
    assert (vit.train.lr, vit.train.optimizer) == (3e-4, "muon")  # given values are kept
    tables = validate({"name": "t", "train": {"objective": "image_text_contrastive"},
                       "sources": [{"name": "pairs", "format": "parquet", "uri": "/x", "image_field": "jpg"}]})
    assert tables.sources[0].has_images
    assert validate({"name": "t", "sources": [{"name": "a", "format": "jsonl", "uri": "/x"}]}).modality == "text"


@pytest.mark.parametrize(("tree", "words"), [
    # a text source under an image objective, and an image source under a text one
    ({"sources": [{"name": "docs", "format": "jsonl", "uri": "/x"}]}, ["sources[0] (docs)", "image samples"]),
    ({"train": {"objective": "causal_lm"}}, ["sources[0] (shapes)", "causal_lm"]),
    ({"model": {"architecture": "llama"}}, ["model.architecture llama", "image_text_contrastive takes clip"]),
    ({"model": {"image_size": 30, "patch_size": 4}}, ["image_size (30)", "patch_size (4)"]),
    ({"model": {"qk_norm": True}}, ["qk_norm", "clip"]),
    ({"train": {"objective": "image_contrastive", "augment": {"crop_scale": [0.9, 0.2]}}}, ["crop_scale"]),
])
def test_image_recipes_that_cannot_work_fail_naming_the_key(tree, words):
    base = _image_recipe()
    for section, value in tree.items():
        base[section] = {**base.get(section, {}), **value} if isinstance(value, dict) else value
    with pytest.raises(RecipeError) as err:
        validate(base)
    for word in words:
        assert word in str(err.value)
