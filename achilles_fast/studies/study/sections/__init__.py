"""The study's sections, one module each (each registers a ``section.Section`` subclass with ``@register``); every
module here is imported by ``section.registered()``, so a new section is a new module here (+ its test)."""
