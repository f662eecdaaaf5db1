"""Clean vs masked greedy continuations: same tokens as a plain greedy loop, weights restored, bad prompts."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from conftest import STORIES, assert_bit_identical, weights_snapshot

from achilles_fast.studies.generate import EmptyPromptError, generate_pair, generations, side_by_side

NEURONS = ["model.layers.0.mlp.down_proj:5", "model.layers.4.mlp.down_proj:17", "model.layers.2.mlp.down_proj:40"]


def plain_greedy(model, tok, prompt, n, zero=()):
    """Token-by-token argmax of full forwards (no cache), channels in ``zero`` zeroed by plain hooks."""
    mods = dict(model.named_modules())
    hs = []
    for name in zero:
        m, c = name.rsplit(":", 1)
        hs.append(mods[m].register_forward_hook(lambda mod, a, out, c=int(c): out.index_fill(-1, torch.tensor([c]),
                                                                                               0)))
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    out = []
    try:
        with torch.no_grad():
            for _ in range(n):
                nxt = int(model(input_ids=ids, use_cache=False).logits[0, -1].argmax())
                out.append(nxt)
                if nxt == tok.eos_token_id:
                    break
                ids = torch.cat([ids, torch.tensor([[nxt]])], 1)
    finally:
        for h in hs:
            h.remove()
    return out


def test_generate_pair_matches_plain_greedy(stories):
    model, tok = stories
    snap = weights_snapshot(model)
    p = generate_pair(model, tok, NEURONS, "Once upon a time", max_new_tokens=12)
    assert_bit_identical(model, snap)
    assert p["clean_ids"] == plain_greedy(model, tok, "Once upon a time", 12)
    assert p["masked_ids"] == plain_greedy(model, tok, "Once upon a time", 12, zero=NEURONS)
    assert p["clean"] == tok.decode(p["clean_ids"], skip_special_tokens=True)
    assert p["n_neurons"] == 3 and p["prompt"] == "Once upon a time"
    diff = next((i for i, (a, b) in enumerate(zip(p["clean_ids"], p["masked_ids"])) if a != b), None)
    if diff is not None:
        assert p["diverges_at"] == diff
    # the clean model's log10 PPL of its own greedy continuation, recomputed
    ids = tok("Once upon a time", return_tensors="pt")["input_ids"][0]
    full = torch.cat([ids, torch.tensor(p["clean_ids"])])
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=full[None]).logits[0].float(), -1)
    nll = -sum(float(lp[len(ids) - 1 + i, t]) for i, t in enumerate(p["clean_ids"])) / len(p["clean_ids"])
    assert p["clean_log10_ppl"] == pytest.approx(nll / 2.302585092994046, abs=1e-5)
    text = side_by_side([p])
    assert "clean" in text and "masked" in text and "Once upon a time" in text


@pytest.mark.parametrize("prompt", ["", "   ", "\n"])
def test_empty_prompt(stories, prompt):
    model, tok = stories
    with pytest.raises(EmptyPromptError):
        generate_pair(model, tok, NEURONS, prompt)
    with pytest.raises(EmptyPromptError):
        generations(model, tok, NEURONS, ["fine", prompt])


def test_unknown_neuron_leaves_weights(stories):
    model, tok = stories
    snap = weights_snapshot(model)
    with pytest.raises(KeyError):
        generate_pair(model, tok, NEURONS + ["model.layers.0.mlp.down_proj:99999"], "Once upon a time", 4)
    assert_bit_identical(model, snap)


def cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "achilles_fast.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=None)


def test_cli_generate(tmp_path):
    out = tmp_path / "g.json"
    p = cli("generate", STORIES, "--neurons", ",".join(NEURONS), "--prompt", "Once upon a time", "--prompt",
            "The dog", "--max-new-tokens", 8, "--out", out)
    assert p.returncode == 0, p.stderr
    assert "clean" in p.stdout and "masked" in p.stdout and "The dog" in p.stdout
    d = json.loads(out.read_text())
    assert [g["prompt"] for g in d["generations"]] == ["Once upon a time", "The dog"]
    assert d["neurons"] == NEURONS and len(d["generations"][0]["clean_ids"]) <= 8


@pytest.mark.parametrize("args,needle", [
    (["--prompt", ""], "prompt is empty"),
    (["--prompt", "x", "--max-new-tokens", "0"], "max_new_tokens"),
])
def test_cli_generate_bad_input(tmp_path, args, needle):
    p = cli("generate", STORIES, "--neurons", NEURONS[0], "--out", tmp_path / "g.json", *args)
    assert p.returncode == 2 and needle in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and not (tmp_path / "g.json").exists()


def test_find_show_generation():
    p = cli("find", STORIES, "--k", 6, "--epsilon", 0.3, "--quiet", "--show-generation", "Once upon a time")
    assert p.returncode == 0, p.stderr
    assert "prompt: 'Once upon a time'" in p.stdout and "masked" in p.stdout
    bad = cli("find", STORIES, "--show-generation", " ")
    assert bad.returncode == 2 and "prompt is empty" in bad.stderr
