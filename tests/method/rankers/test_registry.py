"""The registry (method/rankers/__init__.py): the one list of rankers, filled by the package; a ranker added in one
file is usable through FindConfig, find_critical and the CLI; api.py treats every ranker alike."""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import pytest
import torch

from rankers_common import tiny

import achilles_fast as af
from achilles_fast.method import rankers
from achilles_fast.method.config import FindConfig
from achilles_fast.method.rankers import Ranker, make_ranker, ranker_names, register_ranker
from achilles_fast.method.ranking import Ranking
from achilles_fast.method.text import DEFAULT_TEXT
from achilles_fast.models.registry import discover_targets

# a whole ranker, as a user (or a new module of method/rankers/) writes it
REVERSE_SCAN = '''
import torch

from achilles_fast.method.rankers import Ranker, register_ranker
from achilles_fast.method.ranking import Ranking


class ReverseScan(Ranker):
    """The last channel of the last target first."""

    def rank(self, model, targets, ids):
        n = sum(t.num_channels for t in targets)
        channels = torch.arange(n - 1, -1, -1)[: self.config.max_neurons]  # [n] flat ids
        return Ranking(list(targets), channels, torch.zeros(channels.numel()))


register_ranker("reverse_scan", ReverseScan, help="channels in reverse scan order")
'''


@pytest.fixture
def registry(monkeypatch):
    """Registrations made in a test are undone after it."""
    monkeypatch.setattr(rankers, "_RANKERS", dict(rankers._RANKERS))


@pytest.fixture
def reverse_scan(registry, tmp_path, monkeypatch):
    """REVERSE_SCAN written to a file and imported (registering it)."""
    (tmp_path / "reverse_scan_ranker.py").write_text(REVERSE_SCAN)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "reverse_scan_ranker", raising=False)
    importlib.import_module("reverse_scan_ranker")
    yield "reverse_scan"
    sys.modules.pop("reverse_scan_ranker", None)


def test_the_package_registers_one_ranker_per_module():
    modules = {m.name for m in pkgutil.iter_modules(rankers.__path__) if not m.name.startswith("_")}
    assert set(ranker_names()) == modules
    assert ranker_names()[0] == "sensitivity"
    assert {"sensitivity", "random", "activation", "gradient", "taylor", "superweight", "activation_signed",
            "gradient_signed"} <= modules


def test_root_reexports():
    assert af.register_ranker is register_ranker and af.Ranker is Ranker and af.Ranking is Ranking


def test_config_help_and_choices_derive_from_the_registry(registry):
    assert "tenfold" not in ranker_names()
    with pytest.raises(ValueError, match="unknown ranker 'tenfold'"):
        FindConfig(ranker="tenfold")
    register_ranker("tenfold", Ranker, help="ten folds")
    assert FindConfig(ranker="tenfold").ranker == "tenfold"
    p = argparse.ArgumentParser()
    FindConfig.add_arguments(p)
    action = next(a for a in p._actions if a.dest == "ranker")
    assert tuple(action.choices) == ranker_names() and "tenfold (ten folds)" in action.help


def test_a_ranker_in_one_file_is_usable_everywhere(reverse_scan, tmp_path):
    from achilles_fast.cli import build_parser
    from achilles_fast.studies.baselines import select_methods
    # FindConfig
    assert FindConfig(ranker=reverse_scan).ranker == reverse_scan
    # find_critical: the ranking it made is searched by Stage 2
    model, tok = tiny()
    r = af.find_critical(model, tok, DEFAULT_TEXT, ranker=reverse_scan, max_tokens=32, epsilon=0.05,
                         max_neurons=30, top_report=5, progress=False)
    last = discover_targets(model, "down_proj")[-1]
    assert r.params["ranker"] == reverse_scan and "rank" in r.timings
    assert [n.name for n in r.top_ranked[:2]] == [f"{last.name}:{last.num_channels - 1}",
                                                 f"{last.name}:{last.num_channels - 2}"]
    # the CLI: find's --ranker choices, baselines' --methods
    parser = build_parser()
    args = parser.parse_args(["find", "model", "--ranker", reverse_scan])
    assert args.ranker == reverse_scan
    assert select_methods([reverse_scan, "random"]) == [reverse_scan, "random"]
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    methods = next(a for a in sub.choices["baselines"]._actions if a.dest == "methods")
    assert reverse_scan in methods.help and reverse_scan in methods.default.split(",")


def test_unknown_methods_and_signed_variants():
    from achilles_fast.studies.baselines import default_methods, select_methods
    with pytest.raises(ValueError, match="unknown ranker.*nope"):
        select_methods(["random", "nope"])
    assert select_methods(["activation", "gradient", "taylor", "activation"], signed_per_entry=True) == [
        "activation_signed", "gradient_signed", "taylor"]
    assert "activation_signed" not in default_methods() and "activation" in default_methods()


def test_make_ranker_refuses_what_is_not_a_ranker(registry):
    register_ranker("plain", lambda config, progress=False: object())
    with pytest.raises(TypeError, match="not a Ranker"):
        make_ranker(FindConfig(ranker="plain"))


class _Probe(Ranker):
    """A ranker that declares its own timing key and calls the Stage 2 oracle it is given."""

    timing_key = "probe"
    seen = {}

    def use_stage2(self, sizes_of):
        self.sizes_of = sizes_of

    def rank(self, model, targets, ids):
        n = sum(t.num_channels for t in targets)
        r = Ranking(list(targets), torch.arange(n)[: self.config.max_neurons], torch.zeros(min(n, 40)))
        _Probe.seen["sizes"] = self.sizes_of(r)
        self.stats["probe_calls"] = 1
        return r


@pytest.mark.parametrize("k", [4, "auto"])
def test_api_gives_every_ranker_its_timing_key_stats_and_the_stage2_oracle(registry, k):
    register_ranker("probe", _Probe)
    model, tok = tiny()
    res = af.find_critical(model, tok, DEFAULT_TEXT, ranker="probe", k=k, max_tokens=32, epsilon=[0.02, 0.05],
                           max_neurons=40, progress=False)
    assert set(res[0].timings) == {"probe", "stage2", "total"} and res[0].stats["probe_calls"] == 1
    # the oracle answers what the search finds (0: not converged)
    assert _Probe.seen["sizes"] == [len(r.neurons) if r.converged else 0 for r in res]
    assert ("auto_k_checks_s" in res[0].stats) == (k == "auto")
