"""The OVOS language plugins behind one small object: translate, detect, cache, never raise.

Plugins come from mycroft.conf's ``language`` section (``translation_module``,
``detection_module`` and their config blocks), or from names given by the skill's settings,
and are created through ovos-plugin-manager's factories, once, on first use. A missing or
broken plugin is reported once; from then on text passes through untranslated.
"""
from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from ovos_utils.log import LOG

from .languages import base_lang, normalize_lang

DEFAULT_CACHE_SIZE = 1024
#: texts longer than this are translated but not cached (they rarely repeat)
MAX_CACHED_CHARS = 500


def _configured_language_section() -> Dict[str, Any]:
    from ovos_config import Configuration

    return dict(Configuration().get("language", {}) or {})


def _create_translator(config: Dict[str, Any]) -> Any:
    from ovos_plugin_manager.language import OVOSLangTranslationFactory

    return OVOSLangTranslationFactory.create(config)


def _create_detector(config: Dict[str, Any]) -> Any:
    from ovos_plugin_manager.language import OVOSLangDetectionFactory

    return OVOSLangDetectionFactory.create(config)


class Translator:
    """Translates between base languages through the configured plugins, with an LRU cache."""

    def __init__(self, language_config: Optional[Mapping[str, Any]] = None, *,
                 translation_module: str = "", detection_module: str = "",
                 cache_size: int = DEFAULT_CACHE_SIZE,
                 config_loader: Callable[[], Dict[str, Any]] = _configured_language_section,
                 translator_factory: Callable[[Dict[str, Any]], Any] = _create_translator,
                 detector_factory: Callable[[Dict[str, Any]], Any] = _create_detector) -> None:
        self._given_config = dict(language_config) if language_config is not None else None
        self._modules = {"translation_module": translation_module, "detection_module": detection_module}
        self._config_loader = config_loader
        self._factories = {"translation_module": translator_factory, "detection_module": detector_factory}
        self._plugins: Dict[str, Any] = {}
        self._failed: Dict[str, str] = {}
        self._lock = threading.Lock()
        self._cache: "OrderedDict[Tuple[str, str, str], str]" = OrderedDict()
        self.cache_size = cache_size
        self.hits = 0
        self.misses = 0

    def _config(self) -> Dict[str, Any]:
        config = copy.deepcopy(self._given_config if self._given_config is not None else self._config_loader())
        for key, module in self._modules.items():
            if module:
                config[key] = module
        return config

    def _plugin(self, key: str) -> Optional[Any]:
        """Return the plugin for ``key`` (created once), or None when missing or broken."""
        with self._lock:
            if key in self._plugins:
                return self._plugins[key]
            if key in self._failed:
                return None
            try:
                config = self._config()
                if not config.get(key):
                    raise ValueError(f"language.{key} is not configured")
                plugin = self._factories[key](config)
            except Exception as err:  # plugins raise anything; one clear report, then untranslated
                self._failed[key] = f"{type(err).__name__}: {err}"
                LOG.error(f"no usable language plugin for {key} ({self._failed[key]}); "
                          f"answers will not be translated" if key == "translation_module" else
                          f"no usable language plugin for {key} ({self._failed[key]}); "
                          f"the default language is used when a message carries none")
                return None
            self._plugins[key] = plugin
            return plugin

    @property
    def available(self) -> bool:
        """True when a translation plugin is (or can be) loaded."""
        return self._plugin("translation_module") is not None

    def translate(self, text: str, target: str, source: str) -> str:
        """Return ``text`` in ``target``; the text itself when no translation is needed or possible."""
        if not text.strip() or base_lang(target) == base_lang(source):
            return text
        key = (text, base_lang(target), base_lang(source))
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                self.hits += 1
                return self._cache[key]
        plugin = self._plugin("translation_module")
        if plugin is None:
            return text
        try:
            translated = plugin.translate(text, target=normalize_lang(target), source=normalize_lang(source))
        except Exception as err:  # a plugin failing on one text must not lose the answer
            LOG.warning(f"translation {source} -> {target} failed, using the untranslated text: {err!r}")
            return text
        if not isinstance(translated, str) or not translated.strip():
            LOG.warning(f"translation {source} -> {target} gave no text, using the untranslated text")
            return text
        with self._lock:
            self.misses += 1
            if len(text) <= MAX_CACHED_CHARS and self.cache_size > 0:
                self._cache[key] = translated
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return translated

    def detect(self, text: str) -> Optional[str]:
        """Return the language of ``text`` as a clean tag, or None when detection is not possible."""
        plugin = self._plugin("detection_module")
        if plugin is None or not text.strip():
            return None
        try:
            detected = plugin.detect(text)
        except Exception as err:  # detection is a best effort; the caller has a default
            LOG.warning(f"language detection failed: {err!r}")
            return None
        lang = normalize_lang(detected, default="")
        return lang or None

    @property
    def cached(self) -> int:
        """How many translations are cached now."""
        return len(self._cache)
