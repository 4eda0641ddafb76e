"""Readers for the persona files other programs write; each turns one format into our document.

``detect.read_persona`` reads a file, picks the reader by content and validates the result with
``persona.parse_persona``, so every format ends as the same ``Persona``. Readers never import
the skill, the engine or a solver: they translate data, nothing more.
"""
