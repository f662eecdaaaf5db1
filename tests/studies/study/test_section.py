"""The study's Section interface: the registry, parameters declared once (StudyParams, --quick, CLI flags, checks,
cache keys derived from them), and a new section added by registering one class."""
from __future__ import annotations

import argparse
import dataclasses

import pytest
import torch

from conftest import ToyTokenizer, tiny_model

from achilles_fast.studies.study import SECTIONS, StudyError, StudyParams, study
from achilles_fast.studies.study.params import PARAMS
from achilles_fast.studies.study.section import (REGISTRY, Section, Stage1, all_params, grid_of, positive_int,
                                                  register, registered, table, verdict)


def test_registry_is_filled_by_the_section_modules_in_report_order():
    secs = registered()
    assert tuple(secs) == SECTIONS == ("critical", "cooperativity", "components", "stability", "mechanism",
                                       "generations")
    assert [s.order for s in secs.values()] == sorted(s.order for s in secs.values())
    for s in secs.values():
        assert isinstance(s, Section) and s.title and s.claim and type(s).run is not Section.run


def test_study_params_derive_from_the_sections_params():
    names = [q.name for q in all_params()]
    assert len(names) == len(set(names))
    assert [f.name for f in dataclasses.fields(StudyParams)] == names
    full, quick = StudyParams.make(), StudyParams.make(quick=True)
    for q in all_params():
        assert getattr(full, q.name) == q.default and getattr(quick, q.name) == q.quick_value
    assert quick.alphas == (1.0, 5.0, 10.0) and quick.max_new_tokens == 20 and full.max_new_tokens == 40
    assert StudyParams() == full
    with pytest.raises(TypeError, match="unexpected study parameter"):
        StudyParams.make(nope=1)


@pytest.mark.parametrize("kw, msg", [
    (dict(alphas=()), "the alphas grid is empty"),
    (dict(alphas=(0.0,)), "invalid alphas value"),
    (dict(ks=(0,)), "invalid ks value"),
    (dict(dtypes=("float7",)), "invalid dtypes value"),
    (dict(exhaustive_max=17), "exhaustive_max must be <= 16"),
    (dict(max_sizes=0), "max_sizes must be an integer >= 1"),
    (dict(genres=("poetry",)), "unknown genre"),
])
def test_each_param_is_checked_by_its_declaration(kw, msg):
    with pytest.raises(StudyError, match=msg):
        StudyParams.make(**kw)


def test_cli_flags_come_from_the_params():
    p = argparse.ArgumentParser()
    g = p.add_argument_group("grids")
    flagged = [q for q in PARAMS.values() if q.flag is not None]
    for q in flagged:
        q.add_argument(g)
    args = p.parse_args(["--alphas", "1,2,2", "--ks", "3", "--prompt", "a", "--prompt", "b",
                         "--max-new-tokens", "5"])
    got = {q.name: q.from_args(args) for q in flagged}
    assert got == {"alphas": (1.0, 2.0), "ks": (3,), "lengths": None, "dtypes": None, "prompts": ["a", "b"],
                   "max_new_tokens": 5}
    with pytest.raises(StudyError, match="invalid --ks value 'x'"):
        PARAMS["ks"].from_args(p.parse_args(["--ks", "x"]))


def test_a_new_section_is_one_registered_class(tmp_path, monkeypatch):
    """A toy section: registered, selectable by name, given its Stage 1 scores, cached by its key params."""
    calls = []

    class Toy(Section):
        name = "toy"
        title = "Toy"
        claim = "Masking the critical set changes the loss."
        order = 99  # (a module in sections/ declares its Params here; they join StudyParams on import)

        def stage1(self, p):
            return Stage1(ks=(2,))

        def key_params(self, ctx):
            return {"toy_n": 3}

        def run(self, ctx, p):
            calls.append(ctx.ranking(k=2).channels[:3].tolist())
            r = ctx.default_result()
            return self.block([f"{len(r.neurons)} neurons"], [verdict("the set exists", bool(r.neurons), "-")],
                              tables=[table("t", ["a"], [[1]])], data={"n": len(r.neurons)})

    monkeypatch.setattr("achilles_fast.studies.study.section.REGISTRY", dict(REGISTRY))
    register(Toy)
    assert tuple(registered())[-1] == "toy"
    with pytest.raises(ValueError, match="already registered"):
        register(Toy)
    torch.manual_seed(0)
    model, tok = tiny_model("llama"), ToyTokenizer()
    kw = dict(k=2, max_tokens=16, epsilon=0.05, max_neurons=64, progress=False)
    doc = study(model, tok, "a b c d e f g h i j k l m n o p q r s", sections="critical,toy", out=tmp_path, **kw)
    assert [s["name"] for s in doc["sections"]] == ["critical", "toy"]
    toy = doc["sections"][1]
    assert toy["data"]["n"] == len(doc["sections"][0]["data"]["result"]["neurons"]) and toy["params"] == {"toy_n": 3}
    again = study(model, tok, "a b c d e f g h i j k l m n o p q r s", sections="toy", out=tmp_path, **kw)
    assert again["reused"] == ["critical", "toy"] and len(calls) == 1


def test_param_helpers():
    with pytest.raises(StudyError, match="n must be <= 4 \\(why\\), got 5"):
        positive_int("n", 4, " (why)")(5)
    with pytest.raises(StudyError, match="the g grid is empty"):
        grid_of("g", int)(())
    grid_of("g", int)((1, 2))
