"""The study report renders (HTML parses, every figure a valid image), sections are cached by their parameters, an
interrupted study leaves no half-written report and the weights unchanged, bad input fails early."""
from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from html import unescape
from html.parser import HTMLParser

import pytest
from PIL import Image

from conftest import STORIES, assert_bit_identical, weights_snapshot

from achilles_fast.studies.study import SECTIONS, StudyError, StudyParams, study

CFG = dict(k=6, max_tokens=48, epsilon=0.05, max_neurons=40)
SP = StudyParams(alphas=(5.0, 10.0), ks=(3, 6), lengths=(8, 24), dtypes=("float32",), genres=("prose", "list"),
                 component_ns=(10,), exhaustive_max=5, subsets_per_size=2, max_sizes=2, max_singles=5,
                 max_new_tokens=6)
VOID = {"meta", "img", "br", "hr", "link", "input"}


class _Checker(HTMLParser):
    """Tag balance and the <img> sources of an HTML document."""

    def __init__(self):
        super().__init__()
        self.stack, self.imgs, self.errors = [], [], []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.imgs.append(dict(attrs))
        elif tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        if tag == "img":
            self.imgs.append(dict(attrs))

    def handle_endtag(self, tag):
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(tag)


@pytest.fixture(scope="module")
def report(stories, tmp_path_factory):
    model, tok = stories
    out = tmp_path_factory.mktemp("report")
    doc = study(model, tok, out=out, study_params=SP, progress=False, **CFG)
    return model, tok, out, doc


def test_report_files_render(report):
    model, tok, out, doc = report
    assert doc["complete"] and [s["name"] for s in doc["sections"]] == list(SECTIONS)
    html = (out / "report.html").read_text()
    p = _Checker()
    p.feed(html)
    p.close()
    assert not p.errors and not p.stack, (p.errors, p.stack)
    stems = [f["stem"] for s in doc["sections"] for f in s["figures"]]
    assert len(p.imgs) == len(stems) >= 6
    for img in p.imgs:
        assert img["src"].startswith("data:image/png;base64,")
        im = Image.open(io.BytesIO(base64.b64decode(img["src"].split(",", 1)[1])))
        im.verify()
        assert im.size[0] > 200
    assert "src=\"figures/" not in html and "src=\"http" not in html and "<link" not in html and "<script" not in html
    for stem in stems:
        Image.open(out / "figures" / f"{stem}.png").verify()
        assert ET.parse(out / "figures" / f"{stem}.svg").getroot().tag.endswith("svg")
    md = (out / "report.md").read_text()
    for s in doc["sections"]:
        assert f"## {SECTIONS.index(s['name']) + 1}. {s['title']}" in md
        assert s["claim"] in md and s["claim"] in unescape(html)
        for v in s["verdicts"]:
            assert v["verdict"] in ("holds", "does not hold", "not applicable")
            assert f"**Verdict: {v['verdict']}**" in md
    saved = json.loads((out / "study.json").read_text())
    assert saved["sections"][0]["data"]["result"]["neurons"] == doc["sections"][0]["data"]["result"]["neurons"]
    assert not list(out.glob(".*.tmp")) and not list((out / "figures").glob(".tmp-*"))


def test_rerun_reuses_sections_and_changed_params_rerun(report, monkeypatch):
    model, tok, out, doc = report
    again = study(model, tok, out=out, study_params=SP, progress=False, **CFG)
    assert again["reused"] == list(SECTIONS)
    assert again["sections"] == doc["sections"]
    sp2 = StudyParams(**{**SP.__dict__, "max_new_tokens": 4})
    third = study(model, tok, out=out, study_params=sp2, sections="generations", progress=False, **CFG)
    assert set(third["reused"]) == set(SECTIONS) - {"generations"}  # the others are kept in the report
    gen = next(s for s in third["sections"] if s["name"] == "generations")
    assert gen["data"]["pairs"][0]["max_new_tokens"] == 4
    # another epsilon: a different default set, nothing reused
    fresh = study(model, tok, out=out, study_params=SP, sections="critical", progress=False,
                  **dict(CFG, epsilon=0.1))
    assert fresh["reused"] == [] and [s["name"] for s in fresh["sections"]] == ["critical"]


def test_interrupted_study_leaves_no_report_and_weights_unchanged(stories, tmp_path, monkeypatch):
    from achilles_fast.studies.study.sections import mechanism
    model, tok = stories
    snap = weights_snapshot(model)

    def boom(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(mechanism, "first_token_attention", boom)  # inside the masked attention step
    with pytest.raises(KeyboardInterrupt):
        study(model, tok, out=tmp_path, study_params=SP, sections="critical,cooperativity,mechanism",
              progress=False, **CFG)
    assert_bit_identical(model, snap)
    assert not (tmp_path / "report.html").exists() and not (tmp_path / "report.md").exists()
    partial = json.loads((tmp_path / "study.json").read_text())
    assert not partial["complete"] and [s["name"] for s in partial["sections"]] == ["critical", "cooperativity"]
    monkeypatch.undo()
    doc = study(model, tok, out=tmp_path, study_params=SP, sections="critical,cooperativity,mechanism",
                progress=False, **CFG)
    assert doc["reused"] == ["critical", "cooperativity"] and (tmp_path / "report.html").is_file()
    assert_bit_identical(model, snap)


@pytest.mark.parametrize("kw,needle", [
    (dict(sections="critical,bogus"), "unknown section"),
    (dict(alphas=(1.0, -2.0)), "alpha"),
    (dict(ks=(0,)), "k (number of noisy samples)"),
    (dict(lengths=(1, 8)), "max_tokens"),
    (dict(dtypes=("float99",)), "unknown dtype"),
    (dict(prompts=("",)), "prompt is empty"),
])
def test_bad_input_raises_before_work(stories, kw, needle):
    model, tok = stories
    with pytest.raises(ValueError, match=re.escape(needle)):
        study(model, tok, progress=False, **kw)


def test_bad_texts_and_out(stories, tmp_path):
    model, tok = stories
    (tmp_path / "empty").mkdir()
    with pytest.raises(StudyError, match="no .txt file"):
        study(model, tok, texts=tmp_path / "empty", progress=False)
    (tmp_path / "f").write_text("x")
    with pytest.raises(StudyError, match="not a folder"):
        study(model, tok, out=tmp_path / "f", progress=False)
    d = tmp_path / "blank"
    d.mkdir()
    (d / "a.txt").write_text("   ")
    (d / "b.txt").write_text("some text here")
    with pytest.raises(ValueError, match="empty"):
        study(model, tok, texts=d, progress=False)


def cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "achilles_fast.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("args,needle", [
    (["--sections", "critical,nope"], "unknown section"),
    (["--alphas", "1,x"], "invalid --alphas value"),
    (["--alphas", "1,-1"], "alpha"),
    (["--ks", "2.5"], "invalid --ks value"),
    (["--lengths", "1"], "max_tokens"),
    (["--dtypes", "int3"], "unknown dtype"),
    (["--max-new-tokens", "0"], "max_new_tokens"),
    (["--prompt", ""], "prompt is empty"),
])
def test_cli_bad_input_one_line_exit_2(tmp_path, args, needle):
    p = cli("study", STORIES, "--out", tmp_path / "o", *args)
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert needle in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_cli_empty_texts_folder(tmp_path):
    (tmp_path / "t").mkdir()
    p = cli("study", STORIES, "--out", tmp_path / "o", "--texts", tmp_path / "t")
    assert p.returncode == 2 and "no .txt file" in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_cli_study_runs(tmp_path):
    out = tmp_path / "o"
    p = cli("study", STORIES, "--out", out, "--quiet", "--sections", "critical,components,generations",
            "--k", 6, "--max-tokens", 48, "--epsilon", 0.05, "--max-neurons", 40, "--max-new-tokens", 5)
    assert p.returncode == 0, p.stderr
    assert "[holds]" in p.stdout or "[does not hold]" in p.stdout
    doc = json.loads((out / "study.json").read_text())
    assert [s["name"] for s in doc["sections"]] == ["critical", "components", "generations"]
    assert (out / "report.html").is_file() and (out / "figures" / "components.svg").is_file()
