"""Every default and check once: the token budgets (method/budget.py), the positive-integer check (utils), and the
one tokenization of the scoring/evaluation texts (text_ids, with the model's context) in the method, the
baselines and the study."""
from __future__ import annotations

import argparse
import warnings

import numpy as np
import pytest
import torch

from conftest import ToyTokenizer, tiny_model

import achilles_fast as af
from achilles_fast.method import budget
from achilles_fast.method.perplexity import NLLEvaluator
from achilles_fast.method.stage2 import PrefixNLL
from achilles_fast.utils import positive_int, positive_int_arg

CPU = torch.device("cpu")


# ---- token budgets -------------------------------------------------------------------------------------------------
def test_budgets_have_one_default_each():
    assert budget.stage1_batch_tokens(None, CPU) == budget.auto_batch_tokens(CPU) == budget.CPU_STAGE1_BATCH_TOKENS
    assert budget.stage1_batch_tokens(100, CPU) == 100
    assert budget.eval_batch_tokens(None) == budget.EVAL_BATCH_TOKENS and budget.eval_batch_tokens(100) == 100
    ids = torch.zeros(1, 10, dtype=torch.long)  # [W=1, T=10]
    model = tiny_model("llama")
    assert NLLEvaluator(model, ids).max_batch_tokens == budget.EVAL_BATCH_TOKENS
    assert NLLEvaluator(model, ids, max_batch_tokens=None).max_batch_tokens == budget.EVAL_BATCH_TOKENS
    assert PrefixNLL(model, ids[0], None).ev.max_batch_tokens == budget.EVAL_BATCH_TOKENS
    assert NLLEvaluator(model, ids, max_batch_tokens=4).max_batch_tokens == 10  # at least one window


def test_the_help_says_what_the_defaults_are():
    p = argparse.ArgumentParser()
    af.FindConfig.add_arguments(p)
    (act,) = [a for a in p._actions if a.dest == "max_batch_tokens"]
    assert str(budget.CPU_STAGE1_BATCH_TOKENS) in act.help and str(budget.EVAL_BATCH_TOKENS) in act.help
    assert act.help.count("(default:") == 1


# ---- positive integers ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ok", [1, 7, np.int64(3)])
def test_positive_int_accepts_counts(ok):
    assert positive_int(ok, "n") == ok and type(positive_int(ok, "n")) is int


@pytest.mark.parametrize("bad", [0, -2, True, 2.0, "3", None])
def test_positive_int_refuses_the_rest(bad):
    with pytest.raises(ValueError, match=r"^runs \(draws per level\) must be an integer >= 1, got "):
        positive_int(bad, "runs", "draws per level")


def test_positive_int_arg_for_argparse():
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=positive_int_arg)
    assert p.parse_args(["--n", "5"]).n == 5
    for bad in ("0", "-1", "x", "2.5"):
        with pytest.raises(argparse.ArgumentTypeError, match="must be an integer >= 1"):
            positive_int_arg(bad)


@pytest.mark.parametrize("check, needle", [
    (lambda: af.FindConfig(step=0), "step must be an integer >= 1"),
    (lambda: af.FindConfig(k=0), r"k \(number of noisy samples\) must be an integer >= 1"),
    (lambda: af.FindConfig(max_batch_tokens=0), "max_batch_tokens must be an integer >= 1"),
    (lambda: __import__("achilles_fast.threads").threads.worker_threads(0), "workers must be an integer >= 1"),
    (lambda: __import__("achilles_fast.threads").threads.worker_threads(2, 0), "threads must be an integer >= 1"),
    (lambda: __import__("achilles_fast.studies.generate").studies.generate.check_max_new_tokens(0),
     "max_new_tokens must be an integer >= 1"),
])
def test_every_count_uses_the_one_check(check, needle):
    with pytest.raises(ValueError, match=needle):
        check()


def test_study_counts_raise_study_errors():
    from achilles_fast.studies.study.params import StudyError, StudyParams
    with pytest.raises(StudyError, match="max_singles must be an integer >= 1, got 0"):
        StudyParams(max_singles=0)


@pytest.mark.parametrize("argv, needle", [
    (["sweep", "spec.yaml", "--workers", "0"], "argument --workers: must be an integer >= 1, got '0'"),
    (["sweep", "spec.yaml", "--threads", "x"], "argument --threads: must be an integer >= 1, got 'x'"),
    (["baselines", "m", "--methods", "random", "--runs", "0"], "argument --runs: must be an integer >= 1"),
    (["evaluate", "m", "--neurons", "n.json", "--corpus", "c.jsonl", "--max-samples", "0"],
     "argument --max-samples: must be an integer >= 1"),
])
def test_cli_counts_fail_in_one_line_before_anything(capsys, argv, needle):
    from achilles_fast.cli import main
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"achilles-fast {argv[0]}: error: ") and needle in err[0], err


# ---- one tokenization of the texts ---------------------------------------------------------------------------------
def test_baselines_and_study_cut_texts_at_the_model_context_like_the_method():
    from achilles_fast.method.text import text_ids
    from achilles_fast.studies.baselines import random_levels
    model = tiny_model("llama", max_position_embeddings=24)
    text, tok = "x y z " * 40, ToyTokenizer()  # 240 tokens (one per byte)
    with pytest.warns(UserWarning, match="context of 24"):
        ids, eval_ids = text_ids(model, tok, text, None, 1000)
    assert ids.numel() == 24 and eval_ids is ids
    with pytest.warns(UserWarning, match="context of 24"):
        long = random_levels(model, tok, text, levels=[1, 3], runs=2, max_tokens=1000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cut = random_levels(model, tok, text, levels=[1, 3], runs=2, max_tokens=24)
    assert long == cut  # the same 24 tokens, where before the baselines ran on 240 (past the context)
    with pytest.warns(UserWarning, match="context of 24"):
        res = af.find_critical(model, tok, text, k=2, max_tokens=1000, max_neurons=4, progress=False)
    assert res.params["n_tokens"] == 24
    from achilles_fast.studies.study.context import StudyContext
    from achilles_fast.studies.study.params import StudyParams
    with pytest.warns(UserWarning, match="context of 24"):
        ctx = StudyContext(model, tok, "tiny", af.FindConfig(max_tokens=1000), StudyParams(), text, text[6:], {},
                           "built-in")
    assert ctx.ids.numel() == ctx.eval_ids.numel() == 24
