"""lm-evaluation-harness tasks clean vs masked, offline: local task YAMLs over small JSON data sets written here."""
from __future__ import annotations

import json
import math
import re
import subprocess
import sys

import pytest
import torch

import achilles_fast as af
from achilles_fast.models.registry import discover_targets
from conftest import STORIES, assert_bit_identical, weights_snapshot

pytest.importorskip("lm_eval", reason="downstream tasks need pip install 'achilles_fast[eval]'")

# sentence, correct ending, three absurd endings
MC = [("The sun rises in the", " east", " spoon", " seventeen", " purple"),
      ("Fish swim in the", " water", " oven", " alphabet", " Tuesday"),
      ("Birds can", " fly", " divide", " melt", " loan"),
      ("At night we go to", " bed", " arithmetic", " ninety", " copper"),
      ("Snow is cold and", " white", " loud", " triangular", " edible"),
      ("The cat drank some", " milk", " gravel", " sorrow", " Thursday"),
      ("Once upon a time there was a little", " girl", " integral", " thermostat", " fiscal"),
      ("She opened the door and walked into the", " room", " the", " seventeen", " blue"),
      ("He was very hungry, so he ate an", " apple", " ocean", " elephant", " idea"),
      ("The dog wagged its", " tail", " spoon", " opinion", " ceiling"),
      ("We read books in the", " library", " volcano", " microwave", " sneeze"),
      ("Two plus two equals", " four", " banana", " Paris", " running"),
      ("The capital of France is", " Paris", " Tuesday", " banana", " swimming"),
      ("In winter it is cold, and in summer it is", " hot", " square", " silent", " wooden"),
      ("A week has seven", " days", " elephants", " bridges", " colours"),
      ("The baby was tired, so she fell", " asleep", " upward", " purple", " seventeen"),
      ("You write with a", " pen", " cloud", " river", " thunder"),
      ("The farmer milked the", " cow", " moon", " poem", " calendar"),
      ("Rain falls from the", " sky", " chair", " number", " spoon"),
      ("The boy kicked the", " ball", " idea", " silence", " ocean"),
      ("Ice melts when it gets", " warm", " loud", " sharp", " angry"),
      ("The bird built a", " nest", " car", " tax", " theorem"),
      ("We use an umbrella when it", " rains", " sings", " reads", " counts"),
      ("Bees make", " honey", " bricks", " shoes", " thunder"),
      ("The teacher wrote on the", " board", " sky", " soup", " dream")]
TEXTS = ["Once upon a time, there was a little girl named Lily. She loved to play outside in the sun.",
         "Tom had a red ball. He liked to throw it high in the sky and catch it with his hands.",
         "One day, a big dog came to the park. The dog was very happy and wanted to play with the kids.",
         "The cat sat on the mat. It was a warm day, and the cat fell asleep in the sun."]


def write_tasks(root):
    """Two local lm-eval tasks: a 4-way multiple choice (acc) and rolling perplexity (word_perplexity)."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "mc.jsonl", "w") as f:
        for i, (ctx, *choices) in enumerate(MC):
            order = [(i + j) % 4 for j in range(4)]  # the right ending at varying positions
            f.write(json.dumps({"context": ctx, "choices": [choices[k] for k in order], "label": order.index(0)})
                    + "\n")
    with open(root / "ppl.jsonl", "w") as f:
        for t in TEXTS:
            f.write(json.dumps({"text": t}) + "\n")
    (root / "achilles_toy_mc.yaml").write_text(
        f"task: achilles_toy_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {root / 'mc.jsonl'}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: context\ndoc_to_choice: choices\n"
        "doc_to_target: label\nmetric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n")
    (root / "achilles_toy_ppl.yaml").write_text(
        f"task: achilles_toy_ppl\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {root / 'ppl.jsonl'}\n"
        "test_split: test\noutput_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: text\n"
        "metric_list:\n  - metric: word_perplexity\n    aggregation: weighted_perplexity\n"
        "    higher_is_better: false\n")
    return root


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory):
    return write_tasks(tmp_path_factory.mktemp("lm_eval_tasks"))


@pytest.fixture(scope="module")
def manager(tasks_dir):
    """One lm-eval TaskManager (indexing its ~15k built-in tasks takes seconds) with the local tasks added."""
    from achilles_fast.studies.downstream import task_manager
    return task_manager(str(tasks_dir))


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _word_perplexity(model, tok, neurons=None):
    """Independent: exp(-sum log p(tokens | prefix) / words) over TEXTS, as lm-eval's rolling loglikelihood defines
    it: the tokenizer's own encoding (with its special tokens) after one prefix token (BOS, else EOS)."""
    ll, words = 0.0, 0
    prefix = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    for t in TEXTS:
        ids = torch.tensor([[prefix] + tok(t)["input_ids"]])
        with torch.no_grad():
            if neurons:
                with af.masked(model, neurons):
                    logits = model(ids).logits.float()
            else:
                logits = model(ids).logits.float()
        lp = torch.log_softmax(logits[0, :-1], -1).gather(-1, ids[0, 1:, None])
        ll += float(lp.sum())
        words += len(re.split(r"\s+", t))
    return math.exp(-ll / words)


def _row(rows, task, metric):
    (r,) = [r for r in rows if r["task"] == task and r["metric"] == metric]
    return r


def test_stories_clean_vs_masked(stories, manager):
    from achilles_fast.studies.downstream import evaluate_tasks, format_table
    model, tok = stories
    res = af.find_critical(model, tok, k=6, epsilon=1.0, max_tokens=64, progress=False)
    assert res.converged
    snap = weights_snapshot(model)
    r = evaluate_tasks(model, tok, res.names, ["achilles_toy_mc", "achilles_toy_ppl"], manager=manager)
    assert_bit_identical(model, snap)
    wp = _row(r["rows"], "achilles_toy_ppl", "word_perplexity")
    assert wp["clean"] == pytest.approx(_word_perplexity(model, tok), rel=1e-4)
    assert wp["masked"] == pytest.approx(_word_perplexity(model, tok, res.names), rel=1e-4)
    assert wp["masked"] > 3 * wp["clean"] and wp["delta"] == pytest.approx(wp["masked"] - wp["clean"])
    acc = _row(r["rows"], "achilles_toy_mc", "acc")
    assert 0 <= acc["clean"] <= 1 and 0 <= acc["masked"] <= 1 and acc["clean_stderr"] is not None
    assert r["n_masked"] == len(res.names) and r["n_samples"]["achilles_toy_mc"]["effective"] == len(MC)
    table = format_table(r["rows"])
    assert table.splitlines()[0].split() == ["task", "metric", "clean", "masked", "delta"]
    assert "achilles_toy_ppl" in table and f"{wp['delta']:+.4f}" in table


def test_bad_input(stories, manager, monkeypatch):
    from achilles_fast.studies.downstream import evaluate_tasks
    model, tok = stories
    snap = weights_snapshot(model)
    with pytest.raises(ValueError, match="unknown lm-eval task.*achilles_toy_mcq.*did you mean achilles_toy_mc"):
        evaluate_tasks(model, tok, ["model.layers.0.mlp.down_proj:1"], "achilles_toy_mcq",
                       manager=manager)
    with pytest.raises(KeyError, match="out of range"):
        evaluate_tasks(model, tok, ["model.layers.0.mlp.down_proj:99999"], "achilles_toy_mc",
                       manager=manager)
    with pytest.raises(ValueError, match="no task"):
        evaluate_tasks(model, tok, ["model.layers.0.mlp.down_proj:1"], " , ", manager=manager)
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    with pytest.raises(ImportError, match=r"achilles_fast\[eval\]"):
        evaluate_tasks(model, tok, ["model.layers.0.mlp.down_proj:1"], "achilles_toy_mc")
    assert_bit_identical(model, snap)


def cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "achilles_fast.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)


def test_cli_evaluate_tasks(tasks_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "ev.json"
    names = "model.layers.4.mlp.down_proj:1,model.layers.4.mlp.down_proj:2"
    p = cli("evaluate", STORIES, "--neurons", names, "--tasks", "achilles_toy_ppl", "--include-path", tasks_dir,
            "--limit", 2, "--out", out)
    assert p.returncode == 0, p.stderr[-3000:]
    assert re.search(r"achilles_toy_ppl\s+word_perplexity\s+[\d.]+\s+[\d.]+\s+[+-][\d.]+", p.stdout), p.stdout
    d = json.loads(out.read_text())
    assert d["limit"] == 2 and d["n_samples"]["achilles_toy_ppl"]["effective"] == 2 and d["source"]["kind"] == "hf"
    bad = cli("evaluate", STORIES, "--neurons", names, "--tasks", "achilles_toy_nope", "--include-path", tasks_dir)
    assert bad.returncode == 2 and "unknown lm-eval task(s) achilles_toy_nope" in bad.stderr
    assert "Traceback" not in bad.stderr
    from achilles_fast.cli import main
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    assert main(["evaluate", str(STORIES), "--neurons", names, "--tasks", "arc_easy"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'achilles_fast[eval]'" in err


@pytest.mark.slow
def test_smollm2_critical_moves_metric_random_does_not(smollm2, manager):
    """SmolLM2-135M: masking its critical set collapses the multiple-choice accuracy and the perplexity; as many
    random down_proj channels leave both where they were."""
    from achilles_fast.studies.downstream import evaluate_tasks
    model, tok = smollm2
    res = af.find_critical(model, tok, progress=False)
    assert res.converged
    g = torch.Generator().manual_seed(0)
    targets = discover_targets(model)
    rand = []
    while len(rand) < len(res.names):
        t = targets[int(torch.randint(len(targets), (1,), generator=g))]
        rand.append(f"{t.name}:{int(torch.randint(t.num_channels, (1,), generator=g))}")
    tasks = ["achilles_toy_mc", "achilles_toy_ppl"]
    crit = evaluate_tasks(model, tok, res.names, tasks, manager=manager)
    rnd = evaluate_tasks(model, tok, rand, tasks, manager=manager)
    acc_c, acc_r = _row(crit["rows"], "achilles_toy_mc", "acc"), _row(rnd["rows"], "achilles_toy_mc", "acc")
    wp_c, wp_r = (_row(x["rows"], "achilles_toy_ppl", "word_perplexity") for x in (crit, rnd))
    assert acc_c["clean"] >= 0.8, acc_c
    assert acc_c["delta"] <= -0.3, acc_c
    assert abs(acc_r["delta"]) <= 0.08, acc_r
    assert math.log10(wp_c["masked"] / wp_c["clean"]) >= 1.0, wp_c
    assert abs(math.log10(wp_r["masked"] / wp_r["clean"])) <= 0.05, wp_r
