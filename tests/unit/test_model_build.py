"""Model construction: the three architectures, meta-device init, and continued pre-training from a HF folder."""

from __future__ import annotations

import pytest
import torch

from pretrain.config import ModelConfig
from pretrain.model.build import InitFromError, build_model, check_vocab, init_weights, load_pretrained

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny matmuls: one thread is faster


SHAPE = {"hidden_size": 32, "num_layers": 2, "num_heads": 4, "intermediate_size": 64, "seq_len": 16}


@pytest.mark.parametrize("architecture,cls", [("llama", "LlamaForCausalLM"), ("bert", "BertForMaskedLM"),
                                              ("modernbert", "ModernBertForMaskedLM")])
def test_each_architecture_builds_deterministically_and_meta_init_matches(architecture, cls):
    cfg = ModelConfig(architecture=architecture, **SHAPE)
    model = build_model(cfg, 100, eos_id=0, pad_id=1, seed=3, mask_id=2)
    assert type(model).__name__ == cls
    c = model.config
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.intermediate_size, c.vocab_size) == \
        (32, 2, 4, 64, 100)
    assert c.max_position_embeddings >= 16 and c.pad_token_id == 1
    assert model.get_input_embeddings().weight is model.get_output_embeddings().weight  # tie_embeddings
    assert all(p.dtype == torch.float32 for p in model.parameters())
    if architecture == "llama":
        assert c.use_cache is False
    same = build_model(cfg, 100, eos_id=0, pad_id=1, seed=3, mask_id=2)
    other = build_model(cfg, 100, eos_id=0, pad_id=1, seed=4, mask_id=2)
    meta = build_model(cfg, 100, eos_id=0, pad_id=1, seed=3, mask_id=2, device="meta")
    assert all(t.is_meta for t in meta.state_dict().values())
    meta.to_empty(device="cpu")
    init_weights(meta, 3)  # what FSDP2's meta init does after sharding
    ref = model.state_dict()
    assert all(torch.equal(ref[k], v) for k, v in same.state_dict().items())
    assert all(torch.equal(ref[k], v) for k, v in meta.state_dict().items())
    assert dict(model.named_buffers()).keys() == dict(meta.named_buffers()).keys()
    assert all(torch.equal(b, dict(meta.named_buffers())[k]) for k, b in model.named_buffers())
    assert meta.get_input_embeddings().weight is meta.get_output_embeddings().weight
    assert not torch.equal(ref[next(iter(ref))], other.state_dict()[next(iter(ref))])
    x = torch.randint(3, 100, (2, 16))
    assert model(input_ids=x).logits.shape == (2, 16, 100)


def test_untied_llama_and_its_rope_theta():
    model = build_model(ModelConfig(architecture="llama", tie_embeddings=False, rope_theta=500_000.0, **SHAPE), 100, 0)
    assert model.get_input_embeddings().weight is not model.get_output_embeddings().weight
    assert model.config.rope_parameters["rope_theta"] == 500_000.0


def test_token_ids_outside_the_vocabulary_are_refused():
    with pytest.raises(ValueError, match="mask_id=100"):
        build_model(ModelConfig(**SHAPE), 100, 0, mask_id=100)


def save_hf(tmp_path, kind: str) -> str:
    from transformers import LlamaConfig, LlamaForCausalLM, ModernBertConfig, ModernBertForMaskedLM

    folder = tmp_path / kind
    if kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(vocab_size=120, hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=1, num_attention_heads=4,
                                             max_position_embeddings=64))
    else:
        model = ModernBertForMaskedLM(ModernBertConfig(vocab_size=120, hidden_size=32, intermediate_size=64,
                                                       num_hidden_layers=1, num_attention_heads=4,
                                                       max_position_embeddings=64, pad_token_id=0,
                                                       eos_token_id=1, bos_token_id=1, cls_token_id=1,
                                                       sep_token_id=1))
    model.save_pretrained(folder)
    return str(folder)


def test_load_pretrained_causal_and_masked(tmp_path):
    llama = save_hf(tmp_path, "llama")
    model = load_pretrained(llama, "causal_lm", seq_len=64, vocab_size=120)
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.use_cache is False
    assert all(p.dtype == torch.float32 for p in model.parameters())
    from transformers import AutoModelForCausalLM

    saved = AutoModelForCausalLM.from_pretrained(llama).state_dict()
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
    encoder = save_hf(tmp_path, "modernbert")
    assert type(load_pretrained(encoder, "masked_lm", 32, 100)).__name__ == "ModernBertForMaskedLM"


def test_load_pretrained_refuses_what_cannot_train(tmp_path):
    llama, encoder = save_hf(tmp_path, "llama"), save_hf(tmp_path, "modernbert")
    (tmp_path / "empty").mkdir()
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "config.json").write_text((tmp_path / "llama" / "config.json").read_text())
    cases = [((str(tmp_path / "empty"), "causal_lm", 16, 100), "no config.json"),
             ((str(tmp_path / "noweights"), "causal_lm", 16, 100), "no weights"),
             ((llama, "masked_lm", 16, 100), "not a masked language model"),
             ((encoder, "causal_lm", 16, 100), "not a causal language model"),
             ((llama, "causal_lm", 128, 100), "seq_len 128 exceeds .* 64"),
             ((llama, "causal_lm", 16, 500), "tokenizer has 500 tokens .* 120 rows")]
    for args, message in cases:
        with pytest.raises(InitFromError, match=message) as err:
            load_pretrained(*args)
        assert "model.init_from" in str(err.value) and args[0] in str(err.value)
        assert isinstance(err.value, ValueError)


def test_bert_cannot_continue_as_a_causal_lm(tmp_path):
    from transformers import BertConfig, BertForMaskedLM

    BertForMaskedLM(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=32)).save_pretrained(tmp_path / "bert")
    with pytest.raises(InitFromError, match="bidirectional encoder"):
        load_pretrained(str(tmp_path / "bert"), "causal_lm", 16, 50)


def test_load_pretrained_from_s3(tmp_path, s3):
    from pretrain import storage

    storage.upload_dir(save_hf(tmp_path, "llama"), f"{s3}/models/llama")
    model = load_pretrained(f"{s3}/models/llama", "causal_lm", 32, 120)
    assert type(model).__name__ == "LlamaForCausalLM"
    check_vocab(model, 120)
    with pytest.raises(InitFromError, match="121 tokens"):
        check_vocab(model, 121)
