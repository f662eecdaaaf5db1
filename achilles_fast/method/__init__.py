"""The method: ``config`` (FindConfig), ``stage1`` (sensitivity scores), ``ranking`` (Ranking, Ranker), ``stage2``
(search), ``masking``, ``perplexity``, ``text``, ``result``, ``api`` (find_critical and the evaluations)."""
