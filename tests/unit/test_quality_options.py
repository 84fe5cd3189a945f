"""The model-quality recipe options: QK-norm (Qwen3), depth-scaled init, z-loss, embedding decay and per-group LRs,
and the option combinations the recipe refuses."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pretrain.config import ModelConfig, RecipeError, TrainConfig, load_recipe
from pretrain.model.build import build_model, init_weights, residual_projections
from pretrain.model.flops import flops_per_token, model_shape
from pretrain.model.loss import cross_entropy, linear_cross_entropy
from pretrain.model.memory import estimate_memory, parameter_counts
from pretrain.model.parallel import apply_activation_checkpointing, transformer_blocks
from pretrain.train.objectives import TrainModule, evaluate_sums
from pretrain.train.optim import build_optimizer, split_parameters
from pretrain.train.schedule import build_scheduler, check_resume, lr_factor, trajectory

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny matmuls: one thread is faster

SHAPE = {"hidden_size": 64, "num_layers": 3, "num_heads": 4, "intermediate_size": 128, "seq_len": 32}
SPECIAL = {"eos": 0, "pad": 1, "mask": 2}
VOCAB = 300


def windows(batch: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, VOCAB, (batch, 33), generator=torch.Generator().manual_seed(seed))


def names(model: torch.nn.Module, params) -> set[str]:
    by_id = {id(p): n for n, p in model.named_parameters()}
    return {by_id[id(p)] for p in params}


# -- model.qk_norm ------------------------------------------------------------------------------------------------
def test_qk_norm_builds_qwen3_with_llama_shape_and_meta_init_matches():
    cfg = ModelConfig(qk_norm=True, num_kv_heads=2, rope_theta=50_000.0, **SHAPE)
    model = build_model(cfg, VOCAB, 0, 1, seed=3)
    c = model.config
    assert type(model).__name__ == "Qwen3ForCausalLM" and c.model_type == "qwen3"
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads, c.head_dim) == \
        (64, 3, 4, 2, 16)
    assert c.attention_bias is False and c.use_cache is False and c.rope_parameters["rope_theta"] == 50_000.0
    assert set(c.layer_types) == {"full_attention"} and c.sliding_window is None
    assert model.get_input_embeddings().weight is model.get_output_embeddings().weight
    attn = model.model.layers[0].self_attn
    assert attn.q_norm.weight.shape == (16,) and torch.equal(attn.k_norm.weight, torch.ones(16))
    meta = build_model(cfg, VOCAB, 0, 1, seed=3, device="meta")
    meta.to_empty(device="cpu")
    init_weights(meta, 3)
    assert all(torch.equal(v, meta.state_dict()[k]) for k, v in model.state_dict().items())
    assert all(torch.equal(b, dict(meta.named_buffers())[k]) for k, b in model.named_buffers())


def test_qk_norm_model_everywhere_the_engine_dispatches_on_the_architecture():
    model = build_model(ModelConfig(qk_norm=True, tie_embeddings=False, **SHAPE), VOCAB, 0, 1)
    assert len(transformer_blocks(model)) == 3  # FSDP2 units, activation checkpointing, per-block compile
    n = sum(p.numel() for p in model.parameters())
    counts = parameter_counts(model.config)
    assert counts.total == n  # q_norm / k_norm counted
    assert counts.matrices == sum(p.numel() for p in transformer_blocks(model).parameters() if p.ndim == 2)
    llama = build_model(ModelConfig(tie_embeddings=False, **SHAPE), VOCAB, 0, 1)
    assert model_shape(model.config).qk_norm and not model_shape(llama.config).qk_norm
    assert flops_per_token(model.config, 32) == flops_per_token(llama.config, 32)  # norms cost no matmul FLOPs
    train = TrainConfig(optimizer="muon")
    assert estimate_memory(model.config, train, 1, 2, 32).total > estimate_memory(llama.config, train, 1, 2, 32).total
    muon = split_parameters(model, muon=True)
    assert not any("norm" in n for n in names(model, muon["muon"]))  # q_norm / k_norm are AdamW vectors
    module = TrainModule(model, "causal_lm", "chunked", special_ids=SPECIAL, vocab_size=VOCAB)
    assert module.loss == "chunked"
    plain = TrainModule(model, "causal_lm", "plain", special_ids=SPECIAL, vocab_size=VOCAB)
    x = windows()
    loss = module(x)
    assert torch.allclose(loss, plain(x), atol=1e-5)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    apply_activation_checkpointing(transformer_blocks(model), "selective")
    again = torch.autograd.grad(module(x), list(model.parameters()))
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads, again, strict=True))


def test_qk_norm_is_refused_for_encoders_naming_the_keys():
    with pytest.raises(RecipeError, match=r"model\.qk_norm.*masked_lm"):
        load_recipe("tiny", ["train.objective=masked_lm", "model.qk_norm=true"])
    with pytest.raises(RecipeError, match=r"qk_norm.*bert"):
        load_recipe("tiny", ["train.objective=masked_lm", "model.architecture=bert", "model.qk_norm=true"])


# -- model.init ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("qk_norm", [False, True])
def test_scaled_init_stds_and_meta_build_match(qk_norm):
    cfg = ModelConfig(init="scaled", qk_norm=qk_norm, tie_embeddings=False, hidden_size=256, num_layers=8,
                      num_heads=4, intermediate_size=512, seq_len=32)
    model = build_model(cfg, 1000, 0, 1, seed=5)
    residual = {n for n, m in model.named_modules() if any(m is r for r in residual_projections(model))}
    assert residual == {f"model.layers.{i}.{p}" for i in range(8) for p in ("self_attn.o_proj", "mlp.down_proj")}
    layers = model.model.layers
    small = torch.cat([torch.cat([b.self_attn.o_proj.weight.flatten(), b.mlp.down_proj.weight.flatten()])
                       for b in layers])
    assert small.std().item() == pytest.approx(0.02 / math.sqrt(2 * 8), rel=0.03)
    for weight in (torch.cat([b.self_attn.q_proj.weight.flatten() for b in layers]),
                   torch.cat([b.mlp.gate_proj.weight.flatten() for b in layers]),
                   model.lm_head.weight, model.model.embed_tokens.weight[2:]):
        assert weight.std().item() == pytest.approx(0.02, rel=0.03)
        assert abs(weight.mean().item()) < 1e-3
    assert not model.model.embed_tokens.weight[1].any()  # the padding row, as HF's init
    assert all(torch.equal(p, torch.ones_like(p)) for n, p in model.named_parameters() if "norm" in n)
    meta = build_model(cfg, 1000, 0, 1, seed=5, device="meta")
    meta.to_empty(device="cpu")
    init_weights(meta, 5)  # FSDP2's meta init: the scheme build_model recorded
    assert all(torch.equal(v, meta.state_dict()[k]) for k, v in model.state_dict().items())
    hf = build_model(cfg.model_copy(update={"init": "hf"}), 1000, 0, 1, seed=5)
    assert hf.model.layers[0].self_attn.o_proj.weight.std().item() == pytest.approx(0.02, rel=0.05)
    init_weights(hf, 5, "scaled")  # an explicit scheme wins
    assert all(torch.equal(v, hf.state_dict()[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("architecture,expected", [
    ("bert", {"attention.output.dense", "output.dense"}), ("modernbert", {"attn.Wo", "mlp.Wo"})])
def test_scaled_init_finds_the_encoders_residual_projections(architecture, expected):
    model = build_model(ModelConfig(architecture=architecture, init="scaled", **SHAPE), VOCAB, 0, 1, mask_id=2)
    prefix = 4 if architecture == "bert" else 3  # bert.encoder.layer.N. / model.layers.N.
    found = {n.split(".", prefix)[-1] for n, m in model.named_modules()
             if any(m is r for r in residual_projections(model))}
    assert found == expected
    wo = [r.weight for r in residual_projections(model)]
    assert torch.cat([w.flatten() for w in wo]).std().item() == pytest.approx(0.02 / math.sqrt(6), rel=0.1)


# -- train.z_loss -------------------------------------------------------------------------------------------------
def reference_z_loss(logits: torch.Tensor, targets: torch.Tensor, z: float) -> torch.Tensor:
    keep = targets != -100
    lse = logits.float().logsumexp(dim=-1)[keep]
    return F.cross_entropy(logits.float(), targets) + z * lse.square().mean()


@pytest.mark.parametrize("bias,ignored", [(False, False), (True, True)])
def test_z_loss_chunked_and_plain_match_autograd_on_full_logits(bias, ignored):
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(300, 32, generator=gen, requires_grad=True)
    weight = (torch.randn(500, 32, generator=gen) * 0.3).requires_grad_()
    b = (torch.randn(500, generator=gen) + 3.0).requires_grad_() if bias else None  # lse far from 0
    targets = torch.randint(0, 500, (300,), generator=gen)
    if ignored:
        targets[::3] = -100
    params = [hidden, weight] + ([b] if bias else [])
    z = 1e-2
    ref = reference_z_loss(F.linear(hidden, weight, b), targets, z)
    ref_grads = torch.autograd.grad(2.5 * ref, params)
    assert ref > F.cross_entropy(F.linear(hidden, weight, b), targets) + 1e-3  # the term matters here
    for out in (linear_cross_entropy(hidden, weight, targets, bias=b, chunk_size=64, z_loss=z),
                cross_entropy(F.linear(hidden, weight, b), targets, z_loss=z)):
        grads = torch.autograd.grad(2.5 * out, params)
        assert torch.allclose(out, ref, atol=1e-5, rtol=1e-6)
        for got, want in zip(grads, ref_grads, strict=True):
            assert torch.allclose(got, want, atol=1e-6, rtol=1e-5)
    plain = F.cross_entropy(F.linear(hidden, weight, b), targets)
    assert torch.equal(linear_cross_entropy(hidden, weight, targets, bias=b, chunk_size=64, z_loss=0.0),
                       linear_cross_entropy(hidden, weight, targets, bias=b, chunk_size=64))
    assert torch.equal(cross_entropy(F.linear(hidden, weight, b), targets), plain)
    with pytest.raises(ValueError, match="z_loss"):
        linear_cross_entropy(hidden, weight, targets, z_loss=-1.0)


@pytest.mark.parametrize("objective,architecture", [("causal_lm", "llama"), ("masked_lm", "modernbert")])
def test_z_loss_raises_the_training_loss_only(objective, architecture):
    model = build_model(ModelConfig(architecture=architecture, **SHAPE), VOCAB, 0, 1, mask_id=2)
    x = windows()
    values = {}
    for loss in ("chunked", "plain"):
        for z in (0.0, 0.5):
            module = TrainModule(model, objective, loss, 0.15, SPECIAL, VOCAB, z_loss=z)
            values[loss, z] = (module(x, mask_seed=7).item(), evaluate_sums(module, x, mask_seed=7))
    for loss in ("chunked", "plain"):
        assert values[loss, 0.5][0] > values[loss, 0.0][0] + 1e-3
        assert torch.equal(values[loss, 0.5][1], values[loss, 0.0][1])  # held-out: pure cross-entropy
    assert values["chunked", 0.5][0] == pytest.approx(values["plain", 0.5][0], rel=1e-5)
    recipe = load_recipe("tiny", ["train.z_loss=1e-4"])
    assert TrainModule.from_recipe(model, recipe, SPECIAL, VOCAB).z_loss == 1e-4
    with pytest.raises(RecipeError, match=r"train\.z_loss"):
        load_recipe("tiny", ["train.z_loss=-0.1"])


# -- train.decay_embeddings, embedding_lr, head_lr ----------------------------------------------------------------
def tiny_llama(tie: bool) -> torch.nn.Module:
    return build_model(ModelConfig(tie_embeddings=tie, hidden_size=32, num_layers=1, num_heads=2,
                                   intermediate_size=64, seq_len=16), 64, 0)


def test_defaults_keep_the_decay_and_no_decay_groups():
    model = tiny_llama(tie=False)
    optimizer = build_optimizer(model, TrainConfig(optimizer="adamw"))
    assert [g["kind"] for g in optimizer.param_groups] == ["decay", "no_decay"]
    assert "model.embed_tokens.weight" in names(model, optimizer.param_groups[1]["params"])


@pytest.mark.parametrize("tie", [True, False])
def test_decay_embeddings_puts_the_embedding_and_a_tied_head_in_a_decayed_group(tie):
    model = tiny_llama(tie)
    optimizer = build_optimizer(model, TrainConfig(decay_embeddings=True, weight_decay=0.1, lr=1e-3))
    kinds = {g["kind"]: g for g in optimizer.param_groups}
    assert names(model, kinds["embedding"]["params"]) == {"model.embed_tokens.weight"}  # the tied head: once
    assert kinds["embedding"]["weight_decay"] == 0.1 and kinds["embedding"]["lr"] == 1e-3
    assert not any("embed" in n for n in names(model, kinds["no_decay"]["params"]))
    if tie:
        assert "head" not in kinds
    else:
        assert names(model, kinds["head"]["params"]) == {"lm_head.weight"} and kinds["head"]["weight_decay"] == 0.1
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_embedding_and_head_lrs_are_their_groups_base_lrs_and_the_schedule_scales_them(optimizer):
    model = tiny_llama(tie=False)
    cfg = TrainConfig(optimizer=optimizer, lr=1e-3, embedding_lr=0.3, head_lr=2e-4, muon_lr=0.02, schedule="wsd",
                      warmup_steps=2, max_steps=10, decay_fraction=0.4)
    opt = build_optimizer(model, cfg)
    kinds = {g["kind"]: g for g in opt.param_groups}
    assert (kinds["embedding"]["lr"], kinds["head"]["lr"], kinds["no_decay"]["lr"]) == (0.3, 2e-4, 1e-3)
    assert kinds["embedding"]["weight_decay"] == 0.0  # decay_embeddings false
    assert names(model, kinds["head"]["params"]) == {"lm_head.weight"}
    base = {g["kind"]: g["lr"] for g in opt.param_groups}
    scheduler = build_scheduler(opt, cfg)
    for step in range(1, 12):
        for group in opt.param_groups:
            assert group["lr"] == pytest.approx(base[group["kind"]] * lr_factor(step - 1, cfg))
        opt.step()
        scheduler.step()


def test_head_lr_needs_an_untied_head():
    with pytest.raises(RecipeError, match=r"train\.head_lr.*model\.tie_embeddings"):
        load_recipe("tiny", ["train.head_lr=0.01"])
    assert load_recipe("tiny", ["train.head_lr=0.01", "model.tie_embeddings=false"]).train.head_lr == 0.01
    with pytest.raises(ValueError, match=r"train\.head_lr"):
        build_optimizer(tiny_llama(tie=True), TrainConfig(head_lr=0.01))


def test_a_resume_refuses_a_change_of_the_new_training_options():
    cfg = TrainConfig()
    saved = trajectory(cfg)
    assert {"z_loss", "decay_embeddings", "embedding_lr", "head_lr"} <= set(saved)
    for key, value in (("z_loss", 0.0), ("decay_embeddings", True), ("embedding_lr", 0.1)):
        with pytest.raises(ValueError, match=rf"train\.{key}"):
            check_resume(saved, cfg.model_copy(update={key: value}), 10)


# -- bad input ----------------------------------------------------------------------------------------------------
def test_a_wsd_decay_longer_than_the_run_after_warmup_is_refused_naming_the_keys():
    with pytest.raises(RecipeError) as err:
        load_recipe("tiny", ["train.schedule=wsd", "train.max_steps=40", "train.warmup_steps=30",
                             "train.decay_fraction=0.5"])
    assert all(k in str(err.value) for k in ("train.decay_fraction", "train.max_steps", "train.warmup_steps"))
    ok = load_recipe("tiny", ["train.schedule=wsd", "train.max_steps=40", "train.warmup_steps=20",
                              "train.decay_fraction=0.5"])  # 20 decay steps right after 20 warmup steps
    assert lr_factor(19, ok.train) == 1.0 and lr_factor(39, ok.train) == pytest.approx(ok.train.min_lr_ratio)
    assert load_recipe("tiny", ["train.schedule=cosine", "train.max_steps=10"]).train.max_steps == 10


# -- presets --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("preset", "tied"), [("tiny", True), ("125m", True), ("350m", False), ("1b", False),
                                              ("8b", False)])
def test_presets_untie_the_head_from_350m_up_and_an_explicit_key_still_wins(preset, tied):
    from pretrain.model.build import hf_config

    assert ModelConfig(preset=preset).tie_embeddings is tied
    assert hf_config(ModelConfig(preset=preset), 1000, 0).tie_word_embeddings is tied
    assert ModelConfig(preset=preset, tie_embeddings=not tied).tie_embeddings is (not tied)
    counts = parameter_counts(hf_config(ModelConfig(preset="350m", seq_len=64), 1000, 0))
    tied_counts = parameter_counts(hf_config(ModelConfig(preset="350m", seq_len=64, tie_embeddings=True), 1000, 0))
    assert counts.total - tied_counts.total == counts.head == 1000 * 1024  # a second vocab x hidden table


def test_an_explicit_qk_norm_keeps_the_architecture_resolution_and_its_check():
    """qk_norm given explicitly must not bypass resolving ``auto`` nor the architecture/objective check."""
    recipe = load_recipe("tiny", ["train.objective=masked_lm", "model.qk_norm=false"])
    assert (recipe.model.architecture, recipe.model.qk_norm) == ("modernbert", False)
    with pytest.raises(RecipeError, match=r"model\.architecture llama cannot train train\.objective masked_lm"):
        load_recipe("tiny", ["train.objective=masked_lm", "model.architecture=llama", "model.qk_norm=false"])


def test_a_masked_lm_defaults_to_adamw_and_cosine_unless_the_recipe_says_otherwise():
    """bench/quality.py --objective masked_lm: Muon + WSD lost to AdamW + cosine for the encoder."""
    causal = load_recipe("tiny", [])
    assert (causal.train.optimizer, causal.train.schedule) == ("muon", "wsd")
    masked = load_recipe("tiny", ["train.objective=masked_lm"])
    assert (masked.train.optimizer, masked.train.schedule) == ("adamw", "cosine")
    chosen = load_recipe("tiny", ["train.objective=masked_lm", "train.optimizer=muon", "train.schedule=wsd"])
    assert (chosen.train.optimizer, chosen.train.schedule) == ("muon", "wsd")
