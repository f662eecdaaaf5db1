"""Models: ``families`` (one ``FamilySpec`` per architecture), ``registry`` (target discovery), ``targets``,
``neurons``, ``moe`` (expert targets), ``loading`` (named models, HF folders, GGUF files), ``devices`` (offload-aware
placement)."""
