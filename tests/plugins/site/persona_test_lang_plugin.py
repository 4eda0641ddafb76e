"""A small deterministic language plugin pair for the tests, registered through real entry points.

The translator knows a few sentences by heart and tags anything else with its target language,
so a test can tell exactly what was translated, and into what. It records every call.
"""
from typing import Dict, List, Optional, Tuple

from ovos_plugin_manager.templates.language import LanguageDetector, LanguageTranslator

PHRASES: Dict[Tuple[str, str], Dict[str, str]] = {
    ("pt", "en"): {
        "qual é a capital de frança?": "What is the capital of France?",
        "e da alemanha?": "And of Germany?",
        "olá": "hello",
        "deixe-me pensar.": "Let me think.",
    },
    ("en", "pt"): {
        "The capital of France is Paris.": "A capital de França é Paris.",
        "It is a lovely city.": "É uma cidade encantadora.",
        "The capital of Germany is Berlin.": "A capital da Alemanha é Berlim.",
        "Let me think.": "Deixe-me pensar.",
    },
}
#: every call: (text, target, source)
CALLS: List[Tuple[str, str, str]] = []
#: when set, translate() raises it (tests of the failure path)
FAIL_WITH: List[Exception] = []


def _base(tag: Optional[str]) -> str:
    return (tag or "").split("-")[0].lower()


class TaggingTranslator(LanguageTranslator):
    """Dictionary first, then "[<target>] text"."""

    def translate(self, text: str, target: Optional[str] = None, source: Optional[str] = None) -> str:
        CALLS.append((text, target or "", source or ""))
        if FAIL_WITH:
            raise FAIL_WITH[0]
        table = PHRASES.get((_base(source), _base(target)), {})
        return table.get(text, table.get(text.lower(), f"[{_base(target)}] {text}"))


class KeywordDetector(LanguageDetector):
    """Portuguese or German by a few marker words, English otherwise; "!!" makes it fail."""

    MARKERS = {"pt-PT": {"olá", "qual", "é", "não", "obrigado", "da", "de"},
               "de-DE": {"ist", "wie", "was", "hallo", "danke"}}

    def detect(self, text: str) -> str:
        if "!!" in text:
            raise RuntimeError("detector cannot read this")
        words = set(text.lower().replace("?", " ").split())
        for lang, markers in self.MARKERS.items():
            if words & markers:
                return lang
        return "en-US"

    def detect_probs(self, text: str) -> Dict[str, float]:
        return {self.detect(text): 1.0}
