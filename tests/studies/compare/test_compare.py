"""achilles-fast compare on real stories260K checkpoints: compare.json recomputed independently, reuse, bad input."""
import json
import math
import shutil

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from conftest import STORIES

from achilles_fast.cli import main
from achilles_fast.method.text import DEFAULT_TEXT
from achilles_fast.models.loading import load_model
from achilles_fast.studies.compare import COMPARE_KEYS, CompareError, compare

FAST = dict(k=4, max_tokens=64, epsilon=0.3, strategy="bisect", max_neurons=60)


def _copy(dst, scale=0.0, seed=1, nan=False):
    shutil.copytree(STORIES, dst)
    sd = load_file(str(dst / "model.safetensors"))
    g = torch.Generator().manual_seed(seed)
    sd = {k: (v + scale * v.std() * torch.randn(v.shape, generator=g)).contiguous() for k, v in sd.items()}
    if nan:
        sd["model.layers.0.mlp.down_proj.weight"][0, 0] = float("nan")
    save_file(sd, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    d = tmp_path_factory.mktemp("family")
    return [_copy(d / "base"), _copy(d / "tuned", 0.05, seed=1), _copy(d / "far", 0.3, seed=2)]


@pytest.fixture(scope="module")
def done(family, tmp_path_factory):
    out = tmp_path_factory.mktemp("cmp") / "out"
    doc = compare([str(p) for p in family], str(out), random_seeds=2, log=None, **FAST)
    return out, doc


def _manual_log10_ratio(path, names):
    """Zero the down_proj rows of ``names`` by hand in a fresh load, full forward, plain cross-entropy."""
    model, tok, _ = load_model(str(path))
    ids = tok(DEFAULT_TEXT, return_tensors="pt")["input_ids"][0][:FAST["max_tokens"]][None]

    def nll():
        with torch.no_grad():
            lg = model(input_ids=ids).logits[0, :-1].double()
        return float(F.cross_entropy(lg, ids[0, 1:]))
    clean = nll()
    with torch.no_grad():
        for n in names:
            module, ch = n.rsplit(":", 1)
            model.get_submodule(module).weight[int(ch), :] = 0
    return (nll() - clean) / math.log(10)


def test_compare_json_recomputed(done, family):
    out, doc = done
    on_disk = json.loads((out / "compare.json").read_text())
    assert tuple(on_disk) == COMPARE_KEYS and on_disk == json.loads(json.dumps(doc))
    sets = [c["neurons"] for c in doc["checkpoints"]]
    assert all(c["error"] is None and c["n_critical"] == len(c["neurons"]) for c in doc["checkpoints"])
    for i, a in enumerate(sets):
        for j, b in enumerate(sets):
            u = set(a) | set(b)
            assert doc["jaccard"][i][j] == pytest.approx(len(set(a) & set(b)) / len(u) if u else 1.0)
    # transfer cells: an independent masking by hand (rows zeroed in a fresh model) gives the same ratio
    for i, j in [(0, 1), (2, 0), (1, 1)]:
        assert doc["transfer"][i][j] == pytest.approx(_manual_log10_ratio(family[j], sets[i]), abs=2e-3)
    # the diagonal is each checkpoint's own find
    for i, c in enumerate(doc["checkpoints"]):
        assert doc["transfer"][i][i] == pytest.approx(c["log10_ratio"], abs=1e-6)
    # persistence: every neuron of the union, critical exactly where its checkpoint's set holds it
    union = set().union(*map(set, sets))
    assert {e["neuron"] for e in doc["persistence"]} == union
    for e in doc["persistence"]:
        assert e["critical_in"] == [c["name"] for c, s in zip(doc["checkpoints"], sets) if e["neuron"] in s]
    assert doc["series"]["n_critical"] == [len(s) for s in sets]
    assert doc["series"]["first_set_log10_ratio"] == doc["transfer"][0]
    for f in ("report.md", "report.html", "run.json", "figures/jaccard.png", "figures/transfer.svg",
              "figures/persistence.png", "figures/series.png"):
        assert (out / f).is_file(), f
    assert "data:image/png;base64," in (out / "report.html").read_text()


def test_rerun_reuses_finished_work(done, family):
    out, doc = done
    logs = []
    again = compare([str(p) for p in family], str(out), random_seeds=2, log=logs.append, **FAST)
    assert again == doc
    assert any("3 already in" in s for s in logs) and sum("reused" in s for s in logs) == 3


def test_failed_checkpoint_is_an_error_row(family, tmp_path, capsys):
    bad = _copy(tmp_path / "nan", nan=True)
    rc = main(["compare", str(family[0]), str(bad), str(tmp_path / "missing"), "--out", str(tmp_path / "o"),
               "--random-seeds", "1"] + [f"--{k.replace('_', '-')}={v}" for k, v in FAST.items()])
    assert rc == 1
    doc = json.loads((tmp_path / "o" / "compare.json").read_text())
    errs = [c["error"] for c in doc["checkpoints"]]
    assert errs[0] is None and errs[1] and errs[2]
    assert doc["transfer"][0][0] is not None and doc["transfer"][1] == [None] * 3 and doc["jaccard"][0][1] is None


def _err(capsys):
    return capsys.readouterr().err.strip().splitlines()


def test_bad_inputs_one_line_exit_2(family, tmp_path, capsys):
    from achilles_fast.bench.checkpoints import save_random_llama
    other = save_random_llama(tmp_path / "other", hidden=32, tokenizer_from=STORIES)
    cases = [
        ([str(family[0])], "at least two checkpoints"),
        ([str(family[0]), str(other)], "different architectures"),
        ([str(family[0]), str(family[1]), "--order", "sideways"], "invalid choice"),
        ([str(family[0]), str(family[1]), "--top-k", "0"], ">= 1"),
    ]
    blocker = tmp_path / "file"
    blocker.write_text("x")
    capsys.readouterr()
    cases.append(([str(family[0]), str(family[1]), "--out", str(blocker)], "not a folder"))
    cases.append(([str(family[0]), str(family[1]), "--out", str(family[1])], "--out"))  # an input itself
    for args, msg in cases:
        if "--out" not in args:
            args = args + ["--out", str(tmp_path / "o")]
        assert main(["compare"] + args) == 2, args
        err = _err(capsys)
        assert len(err) == 1 and msg in err[0], (args, err)
    assert not (tmp_path / "o" / "compare.db").exists()  # nothing ran
    with pytest.raises(CompareError, match="model.embed_tokens.weight"):
        compare([str(family[0]), str(other)], str(tmp_path / "o2"))


def test_db_alone_compares_a_sweeps_rows(done, tmp_path):
    out, doc = done
    again = compare(None, str(tmp_path / "from_db"), db=str(out / "compare.db"), random_seeds=2, log=None)
    assert again["jaccard"] == doc["jaccard"] and again["transfer"] == doc["transfer"]
