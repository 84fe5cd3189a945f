"""``pretrain evaluate MODEL_URL`` on any HF model folder (with and without a run root) and ``pretrain compare``."""

from __future__ import annotations

import json
import math
import pydoc
import re
import shutil
from pathlib import Path

import pytest
import torch

from pretrain import cli, storage
from pretrain.config import load_recipe
from pretrain.data.documents import ShardWriter
from pretrain.manifest import Manifest, Shard

pytestmark = pytest.mark.usefixtures("one_thread")

MODULES = ["json", "csv", "textwrap", "string", "shlex", "difflib", "heapq", "bisect", "fractions", "statistics"]
CODE = ["json/decoder.py", "csv.py", "textwrap.py", "string.py", "shlex.py", "heapq.py", "bisect.py",
        "fractions.py", "statistics.py", "difflib.py", "calendar.py", "pprint.py"]


def prose(n: int) -> list[str]:
    """Paragraphs of the installed Python's documentation (real sentences)."""
    out: list[str] = []
    for name in MODULES:
        lines = pydoc.render_doc(__import__(name), renderer=pydoc.plaintext).splitlines()
        out += [" ".join(" ".join(lines[i:i + 14]).split()) for i in range(0, len(lines), 14)]
    return [t for t in out if len(t) > 300][:n]


def code(n: int) -> list[str]:
    """Chunks of 40 lines of the standard library's sources (real code)."""
    import sysconfig

    lib = Path(sysconfig.get_paths()["stdlib"])
    out: list[str] = []
    for rel in CODE:
        lines = (lib / rel).read_text().splitlines()
        out += ["\n".join(lines[i:i + 40]) for i in range(0, len(lines), 40)]
    return [t for t in out if t.count("\n") > 30][:n]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny but real run root: deduplicated documents, the tokenize step's shards and tokenizer, the resolved
    recipe, and a small untrained Llama exported with the run's tokenizer as its model folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from pretrain.data.tokenize import tokenize
    from pretrain.train.step import write_recipe

    root = tmp_path_factory.mktemp("run") / "qs"
    recipe = load_recipe("tiny", [f"run_root={root}", "tokenizer.vocab_size=400", "split.val_fraction=0.2",
                                  "model.seq_len=32", "evaluate.max_batches=2", "evaluate.max_new_tokens=4",
                                  "evaluate.prompts=['def ', 'The ']"])
    shards = []
    for source, texts in (("stdlib-code", code(60)), ("pydoc-web", prose(60))):
        url = recipe.url("dedup", f"{source}.parquet")
        with ShardWriter(url) as writer:
            meta = '{"language": "python"}' if source == "stdlib-code" else "{}"
            writer.write_rows([{"id": f"{source}-{j}", "text": t, "source": source, "source_id": str(j), "url": "",
                                "date": "", "license": "PSF-2.0", "meta": meta} for j, t in enumerate(texts)])
            shard = writer.close()
        shard.meta = {"source": source}
        shards.append(shard)
    dedup = Manifest(kind="documents", root=recipe.url("dedup"), fingerprint="docs", shards=shards)
    dedup.save()
    tokens = tokenize(recipe, dedup, workers=1)
    write_recipe(recipe)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=int(tokens.extra["vocab_size"]), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=256, bos_token_id=0, eos_token_id=0, pad_token_id=1)
    model = root / "model"
    LlamaForCausalLM(config).save_pretrained(model)
    for f in Path(tokens.extra["tokenizer"]).iterdir():
        shutil.copy(f, model / f.name)
    return {"root": root, "recipe": recipe, "tokens": tokens, "model": model}


def other_tokenizer(folder: Path) -> None:
    """Replace the folder's tokenizer with one trained on other text (another vocabulary)."""
    from pretrain.config import TokenizerConfig
    from pretrain.data.tokenizer.load import save_tokenizer
    from pretrain.data.tokenizer.train import train_tokenizer

    for f in folder.glob("tokenizer*"):
        f.unlink()
    texts = [f"line {i} of another corpus with words zeta{i % 7} and eta{i % 5}" for i in range(300)]
    save_tokenizer(train_tokenizer([texts], TokenizerConfig(vocab_size=300, min_frequency=1)), str(folder), 64)


# -- pretrain evaluate MODEL_URL --------------------------------------------------------------------------------
def test_a_model_on_its_run_gets_heldout_per_source_tasks_and_a_report(run, tmp_path, capsys):
    from pretrain.evaluate.heldout import heldout_by_source
    from pretrain.evaluate.tasks import load_index

    out = tmp_path / "out"
    rc = cli.main(["evaluate", str(run["model"]), "--run-root", str(run["root"]), "--out", str(out),
                   "--limit", "5", "--batch-size", "4"])
    printed = capsys.readouterr().out
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert report["objective"] == "causal_lm" and report["recipe"] == "tiny" and report["notes"] == []
    # held-out: the run's seq_len and evaluate.max_batches, per source, as heldout_by_source measures them
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(run["model"], dtype=torch.float32).eval()
    expected = heldout_by_source(model, run["tokens"], 32, 4, 2)
    got = report["metrics"]
    assert set(got["by_source"]) == {"stdlib-code", "pydoc-web"}
    for name, row in expected["by_source"].items():
        assert got["by_source"][name]["loss"] == pytest.approx(row["loss"], rel=1e-5)
        assert got["by_source"][name]["tokens"] == row["tokens"] == 2 * 4 * 32  # 2 batches of 4 windows
    assert got["overall"]["perplexity"] == pytest.approx(math.exp(got["overall"]["loss"]), rel=1e-9)
    assert math.log(400) - 0.5 < got["overall"]["loss"] < math.log(400) + 0.5  # untrained: about ln(vocab)
    # tasks: the run's own task set (built into OUT/tasks: the run's evaluate step never ran), 5 items each
    index = load_index(str(out / "tasks"))
    assert set(report["tasks"]) == set(index["tasks"]) == {"next_line", "next_sentence"}
    for name, row in report["tasks"].items():
        assert row["items"] == 5 and row["harness"] == "lm-eval" and 0.0 <= row["accuracy"] <= 1.0
        assert row["decontamination"] == index["tasks"][name]["decontamination"]
    assert [s["prompt"] for s in report["samples"]] == ["def ", "The "]
    assert set(report["data"]["sources"]) == {"stdlib-code", "pydoc-web"}
    assert report["data"]["sources"]["pydoc-web"]["licenses"] == {"PSF-2.0": 60}
    page = (out / "report.html").read_text()
    assert 'id="plot-heldout"' in page and 'id="plot-tasks"' in page and "http://" not in page.replace(
        'xmlns="http://www.w3.org/2000/svg"', "")
    assert "next_sentence" in (out / "report.md").read_text()
    row = next(line for line in printed.splitlines() if line.strip().startswith("pydoc-web"))
    assert f"{got['by_source']['pydoc-web']['loss']:.4f}" in row
    assert str(out / "report.html") in printed


def test_tokenizer_match_is_by_bytes_or_by_vocabulary(run, tmp_path):
    from transformers import AutoTokenizer

    from pretrain.data.tokenizer.load import tokenizer_hash
    from pretrain.evaluate.standalone import tokenizer_mismatch

    assert tokenizer_mismatch(str(run["model"]), run["tokens"]) is None
    resaved = tmp_path / "resaved"
    AutoTokenizer.from_pretrained(run["model"]).save_pretrained(resaved)
    assert tokenizer_mismatch(str(resaved), run["tokens"]) is None
    # the same tokenizer written with other JSON formatting: other bytes (another hash), same vocabulary and ids
    path = resaved / "tokenizer.json"
    path.write_text(json.dumps(json.loads(path.read_text()), indent=4))
    assert tokenizer_hash(str(resaved)) != run["tokens"].extra["tokenizer_hash"]
    assert tokenizer_mismatch(str(resaved), run["tokens"]) is None
    other = tmp_path / "other"
    shutil.copytree(run["model"], other)
    other_tokenizer(other)
    why = tokenizer_mismatch(str(other), run["tokens"])
    assert why is not None and "is not the run's" in why and "300 tokens" in why
    (other / "tokenizer.json").unlink()
    assert "has no tokenizer.json" in (tokenizer_mismatch(str(other), run["tokens"]) or "")


def test_a_model_with_another_tokenizer_skips_heldout_and_says_why(run, tmp_path, capsys):
    from pretrain.evaluate.standalone import EvaluateOptions, evaluate_model

    other = tmp_path / "other"
    shutil.copytree(run["model"], other)
    other_tokenizer(other)
    # no task: the skipped held-out leaves nothing to measure, an error that carries the reason
    with pytest.raises(ValueError, match=r"nothing to evaluate.*Held-out metrics skipped: the model's tokenizer"):
        evaluate_model(str(other), str(tmp_path / "o1"), EvaluateOptions(run_root=str(run["root"]), tasks=[]))
    assert not (tmp_path / "o1" / "report.json").exists()  # nothing half-written
    rc = cli.main(["evaluate", str(other), "--run-root", str(run["root"]), "--tasks", "", "--out",
                   str(tmp_path / "o2")])
    assert rc == 2 and "Held-out metrics skipped" in capsys.readouterr().err
    # with a task: the tasks run (the model's own tokenizer reads them) and every output says what was skipped
    out = tmp_path / "o3"
    report = evaluate_model(str(other), str(out), EvaluateOptions(run_root=str(run["root"]), tasks=["next_line"],
                                                                   limit=2))
    assert report["metrics"] is None and report["tasks"]["next_line"]["items"] == 2
    assert len(report["samples"]) == 2  # generation needs only the model's own tokenizer
    assert report["notes"] == [note for note in report["notes"] if note.startswith("Held-out metrics skipped")]
    assert "\nHeld-out metrics skipped: the model's tokenizer (" in (out / "report.md").read_text()  # in the summary
    assert ">Held-out metrics skipped: the model&#x27;s tokenizer (" in (out / "report.html").read_text()


def test_a_masked_lm_scores_tasks_by_pll_and_heldout_masked_as_in_training(run, tmp_path, capsys):
    """A task folder alone (no held-out, no data), then with the run root (masked held-out as training masks)."""
    from transformers import ModernBertConfig, ModernBertForMaskedLM

    from pretrain.evaluate.standalone import EvaluateOptions, evaluate_model
    from pretrain.evaluate.tasks import build_recipe_tasks, load_items

    task_dir = tmp_path / "tasks"
    build_recipe_tasks(run["recipe"], str(task_dir))
    tok = json.loads((run["model"] / "tokenizer_config.json").read_text())
    assert tok.get("mask_token")
    torch.manual_seed(0)
    from transformers import AutoTokenizer

    t = AutoTokenizer.from_pretrained(run["model"])
    config = ModernBertConfig(vocab_size=int(run["tokens"].extra["vocab_size"]), hidden_size=32,
                              intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              max_position_embeddings=512, pad_token_id=t.pad_token_id, bos_token_id=t.eos_token_id,
                              eos_token_id=t.eos_token_id, cls_token_id=t.eos_token_id, sep_token_id=t.eos_token_id)
    masked = tmp_path / "bert"
    ModernBertForMaskedLM(config).save_pretrained(masked)
    for f in run["model"].glob("tokenizer*"):
        shutil.copy(f, masked / f.name)
    out = tmp_path / "out"
    rc = cli.main(["evaluate", str(masked), "--task-dir", str(task_dir), "--tasks", "next_line", "--limit", "3",
                   "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert report["objective"] == "masked_lm" and report["metrics"] is None and report["data"] is None
    # with the run: masked held-out metrics masked as in training (the run's probability, special ids and seed)
    from pretrain.evaluate.heldout import heldout_by_source
    from pretrain.evaluate.step import eval_special_ids

    with_run = json.loads(json.dumps(evaluate_model(str(masked), str(tmp_path / "o2"), EvaluateOptions(
        run_root=str(run["root"]), tasks=[], batch_size=4))))
    model = ModernBertForMaskedLM.from_pretrained(masked, dtype=torch.float32).eval()
    expected = heldout_by_source(model, run["tokens"], 32, 4, 2, "masked_lm", probability=0.15,
                                 special_ids=eval_special_ids(run["tokens"], t), vocab_size=config.vocab_size,
                                 seed=0)
    got = with_run["metrics"]["overall"]
    assert got["bits_per_byte"] is None and with_run["samples"] == []
    assert got["loss"] == pytest.approx(expected["overall"]["loss"], rel=1e-5)
    assert got["masked_accuracy"] == pytest.approx(expected["overall"]["masked_accuracy"])
    row = report["tasks"]["next_line"]
    items = load_items(str(task_dir / "next_line" / "next_line.jsonl"))[:3]
    assert row["harness"] == "pll" and row["items"] == 3
    assert row["chance"] == pytest.approx(sum(1 / len(i.choices) for i in items) / 3)
    assert row["accuracy"] in (0.0, 1 / 3, 2 / 3, 1.0)


def test_not_a_language_model_or_nothing_to_do_exits_2_naming_the_path(tmp_path, capsys):
    from transformers import LlamaConfig, ViTConfig

    ViTConfig().save_pretrained(tmp_path / "vit")
    assert cli.main(["evaluate", str(tmp_path / "vit"), "--tasks", "next_line"]) == 2
    assert re.search(rf"{re.escape(str(tmp_path / 'vit'))}: a vit model .*neither a causal nor",
                     capsys.readouterr().err)
    (tmp_path / "empty").mkdir()
    assert cli.main(["evaluate", str(tmp_path / "empty"), "--tasks", "x"]) == 2
    assert f"{tmp_path / 'empty'}: not a Hugging Face model folder" in capsys.readouterr().err
    assert cli.main(["evaluate", str(tmp_path / "missing")]) == 2
    assert f"{tmp_path / 'missing'}: not a Hugging Face model folder" in capsys.readouterr().err
    LlamaConfig(vocab_size=10, hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=1,
                architectures=["LlamaForCausalLM"]).save_pretrained(tmp_path / "llama")
    assert cli.main(["evaluate", str(tmp_path / "llama")]) == 2
    assert "nothing to evaluate" in capsys.readouterr().err
    assert cli.main(["evaluate", str(tmp_path / "llama"), "--run-root", str(tmp_path / "empty")]) == 2
    assert f"{tmp_path / 'empty'}: not a pretrain run root" in capsys.readouterr().err


def test_evaluate_still_runs_a_recipes_steps(monkeypatch, tmp_path, capsys):
    called = []
    monkeypatch.setattr(cli, "cmd_step", lambda args: called.append((args.step, args.recipe, args.overrides)) or 0)
    assert cli.main(["evaluate", "tiny", "train.max_steps=5"]) == 0
    assert cli.main(["eval"]) == 0
    assert called == [("evaluate", "tiny", ["train.max_steps=5"]), ("evaluate", None, [])]
    assert cli.main(["evaluate", "tiny", "--tasks", "next_line"]) == 2
    assert "--tasks: options of `pretrain evaluate MODEL_URL`" in capsys.readouterr().err
    assert cli._model_target(str(tmp_path)) and cli._model_target("s3://bucket/runs/a/model")
    assert not cli._model_target("s3://bucket/recipe.yaml") and not cli._model_target("quikstart")
    assert cli._model_target("./no-such-model") and not cli._model_target("model.seq_len=64")


# -- pretrain compare -------------------------------------------------------------------------------------------
def fake_run(root: Path, name: str, *, steps: int, seq_len: int, micro: int, world: int, losses: list[float],
             val: dict[int, float], manifest: bool, heldout: dict | None = None, tasks: dict | None = None,
             trained: dict | None = None, wall: float | None = None) -> Path:
    """A run root as train, export and evaluate leave it, written by hand (numbers chosen to be checked)."""
    import yaml

    root.mkdir(parents=True)
    train_cfg = {"micro_batch_size": micro, "grad_accum_steps": 1, "nnodes": 1, "nproc_per_node": world}
    (root / "recipe.yaml").write_text(yaml.safe_dump({"name": name, "run_root": str(root),
                                                      "model": {"seq_len": seq_len}, "train": train_cfg}))
    every = steps // len(losses)
    rows = [{"step": 0, "val_loss": val[0]}]
    rows += [{"step": every * (i + 1), "loss": v, "lr": 1e-3, "tokens_per_second": 1000.0}
             for i, v in enumerate(losses)]
    rows += [{"step": s, "val_loss": v} for s, v in val.items() if s]
    (root / "train").mkdir()
    (root / "train" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 9')
    if manifest:
        stats = {"steps": steps, "parameters": 123456, "world_size": world, "final_val_loss": val[max(val)],
                 "final_train_loss": losses[-1], **({"wall_seconds": wall} if wall else {})}
        Manifest(kind="checkpoints", root=str(root / "train"), fingerprint="x",
                 shards=[Shard(url=str(root / "checkpoints" / "step"), rows=steps, bytes=0)], stats=stats,
                 config=train_cfg, extra={"history": rows, "trained_tokens_by_source": trained or {}}).save()
    if heldout is not None:
        (root / "evaluate").mkdir()
        (root / "evaluate" / "report.json").write_text(json.dumps(
            {"recipe": name, "metrics": {"overall": heldout, "by_source": {}}, "tasks": tasks or {}}))
    return root


@pytest.fixture
def runs(tmp_path):
    a = fake_run(tmp_path / "a", "small", steps=100, seq_len=64, micro=8, world=2, losses=[6.0, 5.0, 4.5, 4.0],
                 val={0: 8.0, 50: 5.5, 100: 4.2}, manifest=True,
                 heldout={"loss": 4.25, "perplexity": math.exp(4.25), "bits_per_byte": 1.75},
                 tasks={"next_line": {"accuracy": 0.375, "chance": 0.25}}, trained={"web": 60000, "code": 42400},
                 wall=3725.0)
    b = fake_run(tmp_path / "b", "small", steps=40, seq_len=128, micro=4, world=1, losses=[6.5, 5.9],
                 val={0: 8.1, 40: 5.0}, manifest=False)  # still training: metrics.jsonl and recipe only
    return a, b


def test_compare_puts_runs_side_by_side_with_their_own_numbers(runs, tmp_path, capsys):
    a, b = runs
    out = tmp_path / "cmp"
    assert cli.main(["compare", str(a), str(b), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "compare.json").read_text())
    ra, rb = result["runs"]
    assert ra["tokens_trained"] == 102400 and ra["tokens_per_step"] == 8 * 64 * 2  # from trained tokens / config
    assert rb["tokens_trained"] == 40 * 4 * 128 and rb["steps"] == 40 and rb["parameters"] is None
    assert (ra["final_val_loss"], rb["final_val_loss"]) == (4.2, 5.0)
    assert ra["heldout"] == {"loss": 4.25, "perplexity": pytest.approx(math.exp(4.25)), "bits_per_byte": 1.75}
    assert rb["heldout"] == {"loss": None, "perplexity": None, "bits_per_byte": None}
    assert ra["tasks"] == {"next_line": 0.375} and ra["wall_seconds"] == 3725.0
    # curves against tokens trained: a's validation point at step 50 is at 50 x 1024 tokens
    assert ra["curves"]["val_loss"] == [[0, 8.0], [50, 5.5], [100, 4.2]]  # (step, value); drawn against tokens
    assert rb["curves"]["train_loss"] == [[20, 6.5], [40, 5.9]]  # the torn last line of metrics.jsonl skipped
    table = dict((r[0], r[1:]) for r in result["rows"])
    assert result["headers"] == ["", "small (a)", "small (b)"]
    assert table["tokens trained"] == ["102,400", "20,480"] and table["final val loss"] == ["4.2000", "5.0000"]
    assert table["held-out bits per byte"] == ["1.7500", "-"] and table["task next_line accuracy"] == ["37.5%", "-"]
    assert table["wall time"] == ["1h 02m", "-"] and table["parameters"] == ["123,456", "-"]
    assert re.search(r"tokens trained\s+102,400\s+20,480", printed)
    page = (out / "compare.html").read_text()
    for plot in ("plot-compare-val-loss", "plot-compare-train-loss"):
        svg = page[page.index(f'id="{plot}"'):]
        svg = svg[:svg.index("</svg>")]
        assert re.findall(r'class="series" data-name="([^"]+)"', svg) == ["small (a)", "small (b)"]
        assert "tokens trained" in svg
    val_svg = page[page.index('id="plot-compare-val-loss"'):]
    assert val_svg[:val_svg.index("</svg>")].count("<circle") == 3 + 2  # one point per validation row
    assert "<script src" not in page and "<link" not in page


def test_compare_curves_are_scaled_to_tokens(runs):
    from pretrain.evaluate.compare import compare, curves

    result = compare([str(r) for r in runs])
    data, axis = curves(result["runs"], "val_loss")
    assert axis == "tokens trained"
    assert data["small (a)"] == [(0.0, 8.0), (50 * 1024.0, 5.5), (100 * 1024.0, 4.2)]
    assert data["small (b)"] == [(0.0, 8.1), (40 * 512.0, 5.0)]


def test_compare_a_run_root_without_training_metrics_is_an_error_naming_it(runs, tmp_path, capsys):
    a, _ = runs
    empty = tmp_path / "empty"
    (empty / "train").mkdir(parents=True)
    (empty / "train" / "metrics.jsonl").write_text("")
    assert cli.main(["compare", str(a), str(empty), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"{empty}: no training metrics ({empty / 'train' / 'metrics.jsonl'} is empty" in err
    assert not (tmp_path / "o" / "compare.html").exists()
    assert cli.main(["compare", str(tmp_path / "nowhere")]) == 2
    assert f"{tmp_path / 'nowhere'}: no such run root" in capsys.readouterr().err


def test_compare_reads_run_roots_on_s3(runs, s3, tmp_path):
    from pretrain.evaluate.compare import compare

    a, b = runs
    storage.upload_dir(str(a), f"{s3}/runs/a")
    result = compare([f"{s3}/runs/a", str(b)], f"{s3}/cmp")
    local = compare([str(a), str(b)])
    remote_a = result["runs"][0]
    assert remote_a["run"] == f"{s3}/runs/a"
    assert {k: v for k, v in remote_a.items() if k != "run"} == {k: v for k, v in local["runs"][0].items()
                                                                  if k != "run"}
    assert storage.read_json(f"{s3}/cmp/compare.json")["rows"][2:] == json.loads(json.dumps(local["rows"][2:]))
    assert 'id="plot-compare-val-loss"' in storage.read_text(f"{s3}/cmp/compare.html")


def test_a_model_folder_on_s3_measures_as_its_local_copy(run, s3, tmp_path):
    """Held-out only (``--tasks ''``): the s3:// folder is fetched once and measured like the local one."""
    from pretrain.evaluate.standalone import EvaluateOptions, evaluate_model

    storage.upload_dir(str(run["model"]), f"{s3}/models/tiny")
    opts = EvaluateOptions(run_root=str(run["root"]), tasks=[], batch_size=4)
    remote = evaluate_model(f"{s3}/models/tiny", f"{s3}/eval", opts)
    local = evaluate_model(str(run["model"]), str(tmp_path / "eval"), opts)
    assert remote["tasks"] == {} and remote["model"] == f"{s3}/models/tiny"
    assert remote["metrics"]["overall"]["loss"] == pytest.approx(local["metrics"]["overall"]["loss"], rel=1e-6)
    assert remote["samples"] == local["samples"] and len(remote["samples"]) == 2
    assert storage.read_json(f"{s3}/eval/report.json")["metrics"] == json.loads(json.dumps(remote["metrics"]))
    assert 'id="plot-heldout"' in storage.read_text(f"{s3}/eval/report.html")
