"""The cloze task set (validation documents only, decontaminated) and task accuracy through the real harness."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import pytest
import torch

from pretrain.data.documents import ShardWriter
from pretrain.data.tokenize import is_validation
from pretrain.evaluate.harness import ModelError, continuation_ids, evaluate_harness, pll_scores, run_tasks
from pretrain.evaluate.tasks import TaskFileError, TaskOptions, build_tasks, load_items
from pretrain.manifest import Manifest

pytestmark = pytest.mark.usefixtures("one_thread")

VAL_FRACTION, SEED, NGRAM = 0.5, 0, 13
NAMES = ["Anna", "Boris", "Chen", "Dara", "Emil"]
TAG = re.compile(r"d(\d+)x")  # every line and sentence carries its document's tag


def code_text(k: int) -> str:
    lines = []
    for j in range(8):
        lines += [f"def step_d{k}x_{j}(value_d{k}x, count_{j}):",
                  f"    total_d{k}x = value_d{k}x * {j + 1} + count_{j}" + f" + offset_d{k}x" * (j % 3),
                  f"    return total_d{k}x // {j + 2}", ""]
    return "\n".join(lines)


def prose_text(k: int) -> str:
    return " ".join(f"The river d{k}x passes mill {j} where {NAMES[j % 5]} keeps {j + 2} old boats"
                    + f" and a dog d{k}x" * (j % 3) + "." for j in range(10))


def doc_id(name: str, val: bool) -> str:
    """An id that tokenize's split rule puts in the wanted split."""
    n = 0
    while is_validation(f"{name}-{n}", VAL_FRACTION, SEED) != val:
        n += 1
    return f"{name}-{n}"


def tag(text: str) -> int:
    found = {int(t) for t in TAG.findall(text)}
    assert len(found) == 1, text
    return found.pop()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """16 code and 16 prose documents, the even-numbered ones in the validation split; one more train document
    repeats lines 4..19 of validation code document 0 verbatim: the contamination the task set must find."""
    root = tmp_path_factory.mktemp("corpus")
    docs = []
    for k in range(32):
        code = k < 16
        source = "code" if code else "prose"
        docs.append((doc_id(f"{source}{k}", k % 2 == 0), source, code_text(k) if code else prose_text(k),
                     '{"language":"python"}' if code else "{}", k))
    planted = "\n".join(code_text(0).split("\n")[4:20])
    docs.append((doc_id("copy", False), "code", f"# a copy d99x\n{planted}\n", '{"language":"python"}', 99))
    shards = []
    for source in ("code", "prose"):
        writer = ShardWriter(str(root / f"{source}.parquet"))
        writer.write_rows([{"id": i, "text": t, "source": s, "source_id": i, "url": "", "date": "", "license": "",
                            "meta": m} for i, s, t, m, _ in docs if s == source])
        shard = writer.close()
        shard.meta = {"source": source}
        shards.append(shard)
    manifest = Manifest(kind="dedup", root=str(root), fingerprint="docs", shards=shards)
    return {"documents": manifest, "texts": {i: t for i, _, t, _, _ in docs},
            "val": {i: k for i, _, _, _, k in docs if k % 2 == 0 and k != 99},
            "train_texts": [t for _, _, t, _, k in docs if k % 2 or k == 99]}


def build(corpus, out: Path, seed: int = SEED, **options) -> dict:
    return build_tasks(corpus["documents"], str(out), val_fraction=VAL_FRACTION, seed=seed,
                       options=TaskOptions(**options))


def items_of(out: Path, task: str):
    return load_items(str(out / task / f"{task}.jsonl"))


@pytest.fixture(scope="module")
def task_dir(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tasks")
    build(corpus, out, items_per_document=4)
    return out


def test_items_come_from_validation_documents_with_length_matched_distractors_of_other_documents(corpus, tmp_path):
    out = tmp_path / "a"
    index = build(corpus, out)
    assert set(index["tasks"]) == {"next_line", "next_sentence"}  # code by its documents' language, prose else
    assert index["validation_documents"] == {"code": 8, "prose": 8}
    gaps, positions = [], set()
    for task, source_ks in (("next_line", range(0, 16, 2)), ("next_sentence", range(16, 32, 2))):
        items = items_of(out, task)
        assert len(items) == index["tasks"][task]["items"] > 20
        assert index["tasks"][task]["chance"] == pytest.approx(sum(1 / len(i.choices) for i in items) / len(items))
        for item in items:
            k = corpus["val"][item.doc_id]  # a validation document
            assert item.source == ("code" if task == "next_line" else "prose")
            assert tag(item.context) == k and tag(item.choices[item.answer]) == k
            text = corpus["texts"][item.doc_id]
            truth = item.context + item.choices[item.answer]
            assert truth in (text if task == "next_line" else " ".join(text.split()))  # the true continuation
            assert len(item.choices) == 4 and len(set(item.choices)) == 4
            answer = item.choices[item.answer]
            for j, choice in enumerate(item.choices):
                if j == item.answer:
                    continue
                assert tag(choice) in source_ks and tag(choice) != k  # another validation doc of the same source
                indent = len(answer) - len(answer.lstrip())
                assert choice[:indent] == answer[:indent] and not choice[indent].isspace()  # same indentation
                gaps.append(abs(len(choice.strip()) - len(answer.strip())) / len(answer.strip()))
            positions.add(item.answer)
    assert positions == {0, 1, 2, 3}  # shuffled
    assert sum(gaps) / len(gaps) < 0.2  # matched in length
    assert (out / "next_line" / "next_line.yaml").read_text().count(str((out / "next_line").resolve())) == 1
    # made from the same inputs: reused as it is
    stamp = (out / "tasks.json").stat().st_mtime_ns
    assert build(corpus, out) == index and (out / "tasks.json").stat().st_mtime_ns == stamp
    # fixed seed: the same files again; another seed cuts other items
    build(corpus, tmp_path / "b")
    assert (tmp_path / "b" / "next_line" / "next_line.jsonl").read_text() == \
        (out / "next_line" / "next_line.jsonl").read_text()
    build(corpus, tmp_path / "c", seed=1)
    assert (tmp_path / "c" / "next_line" / "next_line.jsonl").read_text() != \
        (out / "next_line" / "next_line.jsonl").read_text()


def test_the_split_must_be_the_one_tokenize_made(corpus, tmp_path):
    def tokens(code_val: int) -> Manifest:
        by_source = {"code": {"val_documents": code_val, "train_documents": 9}, "prose": {"val_documents": 8}}
        return Manifest(kind="tokens", root="/run/tokens", fingerprint="t", stats={"by_source": by_source})

    assert build_tasks(corpus["documents"], str(tmp_path / "ok"), val_fraction=VAL_FRACTION, seed=SEED,
                       tokens=tokens(8))["tasks"]
    with pytest.raises(TaskFileError, match=r"/run/tokens: validation documents per source .*'code': 7"):
        build_tasks(corpus["documents"], str(tmp_path / "bad"), val_fraction=VAL_FRACTION, seed=SEED,
                    tokens=tokens(7))


def ngrams(text: str, n: int = NGRAM) -> set[tuple[str, ...]]:
    words = text.split()
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def test_items_sharing_a_13_gram_with_the_train_split_are_counted_and_removed(corpus, tmp_path):
    kept_all = build(corpus, tmp_path / "all", decontaminate=False, items_per_document=100)["tasks"]["next_line"]
    everything = items_of(tmp_path / "all", "next_line")
    train = set().union(*(ngrams(t) for t in corpus["train_texts"]))
    flagged = {i.id for i in everything if ngrams(i.context + i.choices[i.answer]) & train}  # by hand
    assert flagged and len(flagged) < len(everything)
    assert {tag(i.context) for i in everything if i.id in flagged} == {0}  # only the planted document's items
    assert kept_all["decontamination"] == {"ngram": NGRAM, "checked": len(everything), "contaminated": len(flagged),
                                           "removed": 0}
    clean = build(corpus, tmp_path / "clean", items_per_document=100)["tasks"]["next_line"]
    assert {i.id for i in items_of(tmp_path / "clean", "next_line")} == {i.id for i in everything} - flagged
    assert clean["decontamination"] == {"ngram": NGRAM, "checked": len(everything), "contaminated": len(flagged),
                                        "removed": len(flagged)}
    assert clean["items"] == len(everything) - len(flagged)
    # with the default caps: more candidates checked than kept, and no kept item is a flagged one
    capped = build(corpus, tmp_path / "capped", items_per_document=2)["tasks"]["next_line"]
    assert capped["items"] == 16  # 2 of each of the 8 validation documents, from 2 x 4 (oversample) checked
    checked = capped["decontamination"]
    assert checked["checked"] == 64 and 0 < checked["contaminated"] == checked["removed"] <= len(flagged)
    assert not {i.id for i in items_of(tmp_path / "capped", "next_line")} & flagged


@pytest.mark.parametrize(("line", "why"), [
    ("{not json", "not JSON"),
    ('{"context": "a", "answer": 0}', "missing choices"),
    ('{"context": "a", "choices": ["x", "y"], "answer": 2}', "answer must be an index"),
    ('{"context": "a", "choices": ["x", 3], "answer": 0}', "choices must be a list of at least 2 strings"),
])
def test_a_malformed_item_names_the_file_and_line(tmp_path, line, why):
    path = tmp_path / "t.jsonl"
    path.write_text('{"context": "a", "choices": ["x", "y"], "answer": 1}\n' + line + "\n")
    with pytest.raises(TaskFileError, match=rf"{re.escape(str(path))}, line 2: {why}"):
        load_items(str(path))


class FirstChoice:
    """An lm-eval model whose log-likelihood favours choice 0 of every item, recording what it was asked."""

    def __new__(cls):
        from lm_eval.api.model import LM

        class _FirstChoice(LM):
            def __init__(self):
                super().__init__()
                self.asked: list[tuple[str, str, int]] = []

            def loglikelihood(self, requests, disable_tqdm=False):
                self.asked += [(*r.args, r.idx) for r in requests]
                return [(0.0 if r.idx == 0 else -1.0, False) for r in requests]

            def loglikelihood_rolling(self, requests, disable_tqdm=False):
                raise NotImplementedError

            def generate_until(self, requests, disable_tqdm=False):
                raise NotImplementedError

        return _FirstChoice()


def test_a_model_that_always_picks_the_first_choice_scores_the_share_of_first_answers(task_dir):
    lm = FirstChoice()
    results = evaluate_harness(lm, str(task_dir), ["next_line", "next_sentence"])
    index = json.loads((task_dir / "tasks.json").read_text())
    for task in ("next_line", "next_sentence"):
        items = items_of(task_dir, task)
        first = sum(i.answer == 0 for i in items) / len(items)
        assert 0 < first < 1
        assert results[task]["accuracy"] == pytest.approx(first)
        assert results[task]["items"] == len(items) and results[task]["chance"] == pytest.approx(0.25)
        assert results[task]["decontamination"] == index["tasks"][task]["decontamination"]
        # the harness saw each item's own text: the context, then each choice as it is
        asked = {(c, t, j) for c, t, j in lm.asked}
        assert all((i.context, ch, j) in asked for i in items for j, ch in enumerate(i.choices))


def test_a_malformed_item_stops_the_run_before_the_harness(task_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(task_dir, broken)
    path = broken / "next_line" / "next_line.jsonl"
    lines = path.read_text().splitlines()
    lines[2] = lines[2].replace('"answer": ', '"answer": 7')
    path.write_text("\n".join(lines) + "\n")
    lm = FirstChoice()
    with pytest.raises(TaskFileError, match=rf"{re.escape(str(path))}, line 3: answer must be an index"):
        evaluate_harness(lm, str(broken), ["next_line"])
    assert not lm.asked


# -- real models ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer_dir(corpus, tmp_path_factory) -> Path:
    from pretrain.config import TokenizerConfig
    from pretrain.data.tokenizer.load import save_tokenizer
    from pretrain.data.tokenizer.train import train_tokenizer

    out = tmp_path_factory.mktemp("tokenizer")
    save_tokenizer(train_tokenizer([list(corpus["texts"].values())], TokenizerConfig(vocab_size=400, min_frequency=1)),
                   str(out), 512)
    return out


def model_folder(tokenizer_dir: Path, out: Path, model) -> str:
    import shutil

    model.save_pretrained(out)
    for f in tokenizer_dir.iterdir():
        shutil.copy(f, out / f.name)
    return str(out)


@pytest.fixture
def no_network(monkeypatch):
    """Any connection off this machine fails: nothing may be downloaded."""
    real = socket.socket.connect

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in ("127.0.0.1", "::1", "localhost"):
            raise OSError(f"network access attempted: {address}")
        return real(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)


def causal_choice_logprobs(model, tokenizer, context: str, choices: list[str]) -> list[float]:
    """Sum of log p(continuation tokens), the continuation being the tokens of context+choice past the context."""
    scores = []
    for choice in choices:
        ctx = context.rstrip()
        cont = context[len(ctx):] + choice
        whole = tokenizer.encode(ctx + cont)
        n = len(tokenizer.encode(ctx))
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([whole])).logits[0].float(), -1)
        scores.append(sum(logp[p - 1, whole[p]].item() for p in range(n, len(whole))))
    return scores


def test_a_tiny_causal_model_runs_through_the_harness_offline(task_dir, tokenizer_dir, tmp_path, no_network):
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=400, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=0, eos_token_id=0, pad_token_id=1)
    folder = model_folder(tokenizer_dir, tmp_path / "causal", LlamaForCausalLM(config))
    results = run_tasks(folder, str(task_dir), ["next_line"], batch_size=16, limit=24)
    got = results["next_line"]
    assert got["items"] == 24 and got["metric"] == "acc" and got["harness"] == "lm-eval"
    # the same accuracy computed independently with transformers
    model, tok = AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
    items = items_of(task_dir, "next_line")[:24]
    picks = []
    for item in items:
        scores = causal_choice_logprobs(model, tok, item.context, item.choices)
        picks.append(scores.index(max(scores)))
    assert got["accuracy"] == pytest.approx(sum(p == i.answer for p, i in zip(picks, items, strict=True)) / 24)
    with pytest.raises(ModelError, match=re.escape(folder)):
        run_tasks(folder, str(task_dir), ["next_line"], objective="masked_lm")


@pytest.fixture(scope="module")
def masked_folder(tokenizer_dir, tmp_path_factory) -> str:
    from transformers import AutoTokenizer, ModernBertConfig, ModernBertForMaskedLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    config = ModernBertConfig(vocab_size=400, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=2, max_position_embeddings=512, pad_token_id=tok.pad_token_id,
                              bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
                              cls_token_id=tok.eos_token_id, sep_token_id=tok.eos_token_id)
    return model_folder(tokenizer_dir, tmp_path_factory.mktemp("masked"), ModernBertForMaskedLM(config))


def test_pseudo_log_likelihood_equals_a_hand_computation(masked_folder):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    model = AutoModelForMaskedLM.from_pretrained(masked_folder).eval()
    tok = AutoTokenizer.from_pretrained(masked_folder)
    context = "The river d4x passes mill 1 where Boris keeps 3 old boats and a dog d4x."
    choices = [" The river d4x passes mill 2 where Chen keeps 4 old boats.", " Emil keeps boats."]
    got = pll_scores(model, tok, context, choices, batch_size=3)
    for choice, score in zip(choices, got, strict=True):
        ctx = tok(context, add_special_tokens=False)["input_ids"]
        cont = tok(choice, add_special_tokens=False)["input_ids"]
        ids = tok(context + choice)["input_ids"]
        assert ids == ctx + cont  # no special tokens; a split before the space
        total = 0.0
        for p in range(len(ctx), len(ids)):  # mask one continuation token at a time, the rest visible
            masked = list(ids)
            masked[p] = tok.mask_token_id
            with torch.no_grad():
                logits = model(torch.tensor([masked])).logits[0, p]
            total += torch.log_softmax(logits.float(), -1)[ids[p]].item()
        assert score == pytest.approx(total, abs=1e-4)
    assert got[0] != pytest.approx(got[1])


def test_a_long_context_is_cut_from_the_left_keeping_the_continuation(masked_folder):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(masked_folder)
    context, choice = prose_text(2), " Anna keeps boats."
    full, positions = continuation_ids(tok, context, choice, 10_000)
    cut, kept = continuation_ids(tok, context, choice, 16)
    assert len(full) > 16 and len(cut) == 16
    assert cut == full[-16:] and [cut[p] for p in kept] == [full[p] for p in positions]
    assert tok.decode([full[p] for p in positions]) == choice


def test_a_masked_model_is_scored_by_pll_on_the_same_items(masked_folder, task_dir, no_network):
    results = run_tasks(masked_folder, str(task_dir), ["next_sentence"], batch_size=64, limit=12)
    got = results["next_sentence"]
    assert got["items"] == 12 and got["harness"] == "pll" and got["chance"] == pytest.approx(0.25)
    assert 0.0 <= got["accuracy"] <= 1.0 and got["accuracy"] * 12 == pytest.approx(round(got["accuracy"] * 12))
    assert sum(s["items"] for s in got["by_source"].values()) == 12
    with pytest.raises(ModelError, match=rf"{re.escape(masked_folder)}: a masked LM is scored on the local task set"):
        run_tasks(masked_folder, str(task_dir), ["hellaswag"])


def test_a_folder_that_is_no_language_model_is_named(tmp_path):
    from transformers import ViTConfig

    with pytest.raises(ModelError, match=rf"{re.escape(str(tmp_path))}: not a Hugging Face model folder"):
        run_tasks(str(tmp_path), None, ["next_line"])
    ViTConfig().save_pretrained(tmp_path / "vit")
    with pytest.raises(ModelError, match=rf"{re.escape(str(tmp_path / 'vit'))}: a vit model .* neither a causal nor"):
        run_tasks(str(tmp_path / "vit"), None, ["next_line"])
