"""Export parity: a trained model's DCP checkpoint -> HF folder -> AutoModelFor... gives the very same logits."""

from __future__ import annotations

import json

import pytest
import torch

from pretrain.config import load_recipe
from pretrain.manifest import Manifest
from pretrain.model.build import build_model, load_pretrained
from pretrain.model.export import export_model
from pretrain.train.checkpoint import CheckpointManager
from pretrain.train.objectives import TrainModule

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny matmuls: one thread is faster


TEXT = ["def add(a, b):\n    return a + b\n", "The quick brown fox jumps over the lazy dog. " * 3,
        "import os\nprint(os.getcwd())\n"] * 20


def tokenizer_folder(url: str) -> dict:
    from pretrain.config import TokenizerConfig
    from pretrain.data.tokenizer.load import load_tokenizer, save_tokenizer, special_ids
    from pretrain.data.tokenizer.train import train_tokenizer

    save_tokenizer(train_tokenizer([TEXT], TokenizerConfig(vocab_size=300, min_frequency=1)), url, 64)
    tok = load_tokenizer(url)
    ids = special_ids(tok, url)
    return {"tokenizer": url, "vocab_size": tok.get_vocab_size(), "eos_id": ids["eos"], "pad_id": ids["pad"],
            "mask_id": ids["mask"]}


def val_shard(root, extra: dict) -> list:
    """A validation token shard of the tokenizer's encoded texts (what the evaluate step reads)."""
    from pretrain.data.tokenizer.load import load_tokenizer
    from pretrain.manifest import Shard
    from pretrain.tokens import TokenShardWriter

    tok = load_tokenizer(extra["tokenizer"])
    writer = TokenShardWriter(str(root / "val" / "part-00000"), extra["vocab_size"], extra["eos_id"], "t")
    for text in TEXT:
        writer.add([*tok.encode(text).ids, extra["eos_id"]], len(text))
    header = writer.close()
    return [Shard(url=writer.url, rows=header["tokens"], bytes=header["bytes"], meta={"split": "val"})]


def train_and_checkpoint(model, recipe, extra: dict) -> Manifest:
    special = {"eos": extra["eos_id"], "pad": extra["pad_id"], "mask": extra["mask_id"]}
    module = TrainModule.from_recipe(model, recipe, special, extra["vocab_size"])
    optimizer = torch.optim.AdamW(module.model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    x = torch.randint(3, extra["vocab_size"], (2, recipe.model.seq_len + 1), generator=torch.Generator().manual_seed(0))
    for step in range(3):
        module(x, mask_seed=step).backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    url = CheckpointManager(recipe.url("checkpoints")).save(3, module.model, optimizer, scheduler)
    return Manifest(kind="checkpoints", root=recipe.url("checkpoints"), fingerprint="ckpt",
                    stats={"steps": 3, "final_val_loss": 1.0}, extra={"latest": url})


def assert_same_logits(model, folder: str, auto: str, vocab: int, mask_token: bool) -> None:
    import transformers

    exported = getattr(transformers, auto).from_pretrained(folder)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    assert tokenizer.eos_token is not None and (tokenizer.mask_token is not None) == mask_token
    x = torch.randint(3, vocab, (2, 16), generator=torch.Generator().manual_seed(1))
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(input_ids=x).logits, exported(input_ids=x).logits, atol=1e-5)
    if auto == "AutoModelForCausalLM":
        assert exported.config.use_cache is True
        out = exported.generate(x[:1, :4], max_new_tokens=3, do_sample=False, pad_token_id=tokenizer.eos_token_id)
        assert out.shape == (1, 7)


@pytest.mark.parametrize("objective,architecture,auto,pipeline", [
    ("causal_lm", "llama", "AutoModelForCausalLM", "text-generation"),
    ("masked_lm", "modernbert", "AutoModelForMaskedLM", "fill-mask"),
    ("masked_lm", "bert", "AutoModelForMaskedLM", "fill-mask")])
def test_export_gives_the_trained_logits(tmp_path, objective, architecture, auto, pipeline):
    recipe = load_recipe("tiny", [f"run_root={tmp_path / 'run'}", f"train.objective={objective}",
                                  f"model.architecture={architecture}", "model.seq_len=16", "model.hidden_size=32",
                                  "model.num_layers=2", "model.num_heads=4", "model.intermediate_size=64",
                                  "evaluate.max_batches=2", "evaluate.max_new_tokens=4"])
    extra = tokenizer_folder(str(tmp_path / "tokenizer"))
    tokens = Manifest(kind="tokens", root=str(tmp_path / "tokens"), fingerprint="tok", extra=extra,
                      shards=val_shard(tmp_path / "tokens", extra))
    model = build_model(recipe.model, extra["vocab_size"], extra["eos_id"], extra["pad_id"], recipe.seed,
                        mask_id=extra["mask_id"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    checkpoints = train_and_checkpoint(model, recipe, extra)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())  # trained
    result = export_model(recipe, checkpoints, tokens)
    assert result.extra["pipeline_tag"] == pipeline
    folder = recipe.url("model")
    assert f"pipeline_tag: {pipeline}" in (tmp_path / "run" / "model" / "README.md").read_text()
    assert_same_logits(model, folder, auto, extra["vocab_size"], mask_token=True)
    # the evaluate step loads the folder as a user would
    from pretrain.evaluate.step import evaluate

    metrics = evaluate(recipe, result, tokens).stats
    report = json.loads((tmp_path / "run" / "evaluate" / "report.json").read_text())
    assert metrics["loss"] > 0 and metrics["perplexity"] > 1 and metrics["tokens"] > 0
    if objective == "masked_lm":
        assert report["samples"] == [] and 0 <= metrics["masked_accuracy"] <= 1 and metrics["bits_per_byte"] is None
    else:
        assert len(report["samples"]) == len(recipe.evaluate.prompts) and metrics["bits_per_byte"] > 0


def test_export_of_continued_pretraining_uses_the_init_from_architecture(tmp_path):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    extra = tokenizer_folder(str(tmp_path / "base"))
    Qwen2ForCausalLM(Qwen2Config(vocab_size=extra["vocab_size"] + 4, hidden_size=32, intermediate_size=64,
                                 num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                                 max_position_embeddings=64)).save_pretrained(tmp_path / "base")
    recipe = load_recipe("tiny", [f"run_root={tmp_path / 'run'}", f"model.init_from={tmp_path / 'base'}",
                                  "model.seq_len=16"])
    tokens = Manifest(kind="tokens", root=str(tmp_path / "tokens"), fingerprint="tok", extra=extra)
    model = load_pretrained(recipe.model.init_from, "causal_lm", 16, extra["vocab_size"])
    checkpoints = train_and_checkpoint(model, recipe, extra)
    export_model(recipe, checkpoints, tokens)
    assert_same_logits(model, recipe.url("model"), "AutoModelForCausalLM", extra["vocab_size"], mask_token=True)
    assert "continued from" in (tmp_path / "run" / "model" / "README.md").read_text()


def test_export_of_a_qk_norm_model_is_qwen3_with_its_norms_and_the_trained_logits(tmp_path):
    """model.qk_norm builds Qwen3ForCausalLM: the export keeps q_norm / k_norm, loads with AutoModelForCausalLM
    without remote code, and gives the trained model's logits; depth-scaled init and z-loss ride along."""
    from safetensors import safe_open

    recipe = load_recipe("tiny", [f"run_root={tmp_path / 'run'}", "model.qk_norm=true", "model.init=scaled",
                                  "model.tie_embeddings=false", "train.z_loss=1e-3", "model.seq_len=16",
                                  "model.hidden_size=32", "model.num_layers=2", "model.num_heads=4",
                                  "model.intermediate_size=64", "evaluate.max_batches=2", "evaluate.max_new_tokens=4"])
    extra = tokenizer_folder(str(tmp_path / "tokenizer"))
    tokens = Manifest(kind="tokens", root=str(tmp_path / "tokens"), fingerprint="tok", extra=extra,
                      shards=val_shard(tmp_path / "tokens", extra))
    model = build_model(recipe.model, extra["vocab_size"], extra["eos_id"], extra["pad_id"], recipe.seed)
    assert type(model).__name__ == "Qwen3ForCausalLM"
    norms = {k: v.clone() for k, v in model.state_dict().items() if k.endswith(("q_norm.weight", "k_norm.weight"))}
    assert len(norms) == 4
    checkpoints = train_and_checkpoint(model, recipe, extra)
    assert any(not torch.equal(v, model.state_dict()[k]) for k, v in norms.items())  # the norms trained too
    result = export_model(recipe, checkpoints, tokens)
    folder = tmp_path / "run" / "model"
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "qwen3" and config["architectures"] == ["Qwen3ForCausalLM"]
    assert "auto_map" not in config and config["head_dim"] == 8 and config["tie_word_embeddings"] is False
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        saved = set(f.keys())
    assert {"model.layers.1.self_attn.q_norm.weight", "model.layers.1.self_attn.k_norm.weight"} <= saved
    assert_same_logits(model, recipe.url("model"), "AutoModelForCausalLM", extra["vocab_size"], mask_token=True)
    from pretrain.evaluate.step import evaluate

    metrics = evaluate(recipe, result, tokens).stats
    assert metrics["loss"] > 0 and metrics["bits_per_byte"] > 0
