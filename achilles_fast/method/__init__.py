"""The method: ``config`` (FindConfig), ``stage1`` (sensitivity scores), ``ranking`` (Ranking), ``rankers`` (the
Ranker interface, the registry, one module per ranker), ``stage2`` (search), ``masking``, ``perplexity``, ``text``,
``result``, ``api`` (find_critical and the evaluations)."""
