"""The paper's unit: per_token entries up to each ranked channel (EntryCount) against a brute-force count."""
import torch

from conftest import STORIES

from achilles_fast.method.ranking import EntryCount, rank_channels


def _brute(scores, ids):
    """1-based position of each channel's first entry in the descending order of every (target, pos, channel)."""
    flat, chan, off = [], [], 0
    for s in scores:
        T, C = s.shape
        flat.append(s.reshape(-1))
        chan.append((torch.arange(T * C) % C) + off)
        off += C
    flat, chan = torch.cat(flat), torch.cat(chan)
    order = torch.argsort(flat, descending=True, stable=True)
    first = {}
    for pos, c in enumerate(chan[order].tolist(), 1):
        first.setdefault(c, pos)
    return [first[int(c)] for c in ids]


def test_entry_count_matches_brute_force_on_random_scores():
    g = torch.Generator().manual_seed(0)
    for trial in range(10):
        T = int(torch.randint(2, 9, (1,), generator=g))
        scores = [torch.rand(T, int(torch.randint(1, 13, (1,), generator=g)), generator=g) for _ in range(4)]
        top = int(torch.randint(1, 20, (1,), generator=g))
        ec = EntryCount(top)
        for s in scores:
            ec.add(s)
        ids, vals = rank_channels(scores, "per_token", top=top)
        assert ec.first_entries(vals) == _brute(scores, ids), trial
        assert ec.kept.numel() <= top * T  # bounded: only entries above the running floor are kept


def test_find_reports_paper_entries(tmp_path):
    from achilles_fast import find_critical, load_model
    from achilles_fast.method.stage1 import sensitivity_scores
    from achilles_fast.method.text import DEFAULT_TEXT
    from achilles_fast.models.registry import discover_targets
    model, tok, _ = load_model(str(STORIES))
    res = find_critical(model, tok, k=4, max_tokens=48, epsilon=0.2, strategy="bisect", max_neurons=80,
                        progress=False)
    assert res.converged
    ids = tok(DEFAULT_TEXT, return_tensors="pt")["input_ids"][0][:48]
    targets = discover_targets(model, "down_proj")
    with torch.no_grad():
        full = sensitivity_scores(model, targets, ids, k=4, alpha=5.0, seed=0)  # [T, C] per target
    ch, _ = rank_channels(full, "per_token", top=80)
    assert res.stats["paper_entries"] == _brute(full, ch)[len(res.neurons) - 1]
    assert res.stats["paper_entries"] >= len(res.neurons)
