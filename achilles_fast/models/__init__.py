"""Models: ``registry`` (families and their targets), ``targets``, ``neurons``, ``moe`` (expert targets), ``loading``
(named models, HF folders, GGUF files), ``devices`` (offload-aware placement)."""
