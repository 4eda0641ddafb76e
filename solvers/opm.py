"""Run any installed OVOS solver plugin (found through its OPM entry point) as a link in the chain."""
from __future__ import annotations

import copy
import inspect
from functools import lru_cache
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Callable, FrozenSet, Iterable, Iterator, Mapping, Optional, Sequence

from ovos_utils.lang import standardize_lang_tag
from ovos_utils.log import LOG

from ..languages import base_lang, normalize_lang
from .base import (CancelToken, ChatMessage, Solver, SolverConfigError, SolverContext,
                   SolverResponseError, SolverUnavailable, last_user_text)

#: entry point groups searched in order; the legacy Neon group is still used by older plugins
ENTRY_POINT_GROUPS = ("opm.solver.question", "opm.solver.chat", "neon.plugin.solver")


def _group_entry_points(group: str) -> Iterable[EntryPoint]:
    """Return the entry points of one group on every supported Python version."""
    found = entry_points()
    if hasattr(found, "select"):
        return found.select(group=group)
    return found.get(group, ())  # Python 3.9 returns a dict of lists


@lru_cache(maxsize=1)
def installed_plugin_ids() -> FrozenSet[str]:
    """Return the ids (entry point names) of every installed OVOS solver plugin; empty if unreadable."""
    try:
        return frozenset(point.name for group in ENTRY_POINT_GROUPS for point in _group_entry_points(group))
    except Exception:  # a broken distribution's metadata can raise anything; listing must never fail
        LOG.exception("could not list the installed OVOS solver plugins")
        return frozenset()


def _find_entry_point(plugin_id: str) -> Optional[EntryPoint]:
    """Return the entry point named ``plugin_id`` from the first group that has it."""
    for group in ENTRY_POINT_GROUPS:
        for point in _group_entry_points(group):
            if point.name == plugin_id:
                return point
    return None


def load_plugin_class(plugin_id: str) -> type:
    """Import and return the class behind ``plugin_id``; raise ``SolverConfigError`` if it cannot load."""
    try:
        point = _find_entry_point(plugin_id)
    except Exception as err:  # unreadable distribution metadata, as in installed_plugin_ids
        raise SolverConfigError(f"cannot read the entry point of solver plugin {plugin_id!r}: {err}") from err
    if point is None:
        raise SolverConfigError(f"solver plugin {plugin_id!r} is not installed")
    try:
        plugin_class = point.load()
    except Exception as err:  # importing third-party code can fail in any way
        raise SolverConfigError(f"solver plugin {plugin_id!r} failed to load: {err}") from err
    if not isinstance(plugin_class, type):
        raise SolverConfigError(f"solver plugin {plugin_id!r} does not point at a class")
    return plugin_class


def _call_plugin(method: Callable[..., Any], first: Any, lang: str) -> Any:
    """Call a plugin method with its first argument and the language in the form its signature takes."""
    try:
        params = inspect.signature(method).parameters
    except (TypeError, ValueError):
        params = {}
    if "lang" in params:
        return method(first, lang=lang)
    if "context" in params:
        return method(first, context={"lang": lang})  # plugins written before OPM 0.1 took a context dict
    return method(first)


def _as_chunks(result: Any) -> Iterable[Any]:
    """Return a plugin's answer as an iterable of chunks: None gives none, a string gives one."""
    if result is None:
        return ()
    if isinstance(result, str):
        return (result,)
    return result


class OPMSolver(Solver):
    """Answers through an installed OVOS solver plugin: chat plugins get the whole chat, others the question.

    The config block is handed to the plugin as its ``config`` (``lang`` defaults to the persona's
    language). OPM's own translation is switched off because the engine translates for itself; set
    ``supported_langs`` in the block to let the engine translate into the languages the plugin knows.
    """

    def __init__(self, plugin_id: str, config: Mapping[str, Any], context: SolverContext, *,
                 plugin_class: Optional[type] = None) -> None:
        super().__init__(config, context)
        self.solver_id = plugin_id
        langs = self.config.get("supported_langs")
        if langs is not None:
            if isinstance(langs, str) or not all(isinstance(lang, str) for lang in langs):
                raise SolverConfigError(f"solver plugin {plugin_id!r}: 'supported_langs' must be a list of tags")
            self.supported_langs = frozenset(base_lang(lang) for lang in langs)
        plugin_config = copy.deepcopy(self.config)  # OPM mutates config lists (supported_langs) in place
        plugin_config.setdefault("lang", standardize_lang_tag(normalize_lang(context.persona_lang)))
        plugin_config["enable_tx"] = False
        cls = plugin_class if plugin_class is not None else load_plugin_class(plugin_id)
        try:
            self._plugin = cls(config=plugin_config)
        except Exception as err:  # plugin constructors may raise anything (missing model, bad key)
            raise SolverConfigError(f"solver plugin {plugin_id!r} failed to start: {err}") from err
        # the constructor argument is what OPM reads; set after construction since many plugins
        # take only config= and never pass enable_tx on to the base class
        self._plugin.enable_tx = False
        self._chat = callable(getattr(self._plugin, "continue_chat", None))
        self.supports_history = self._chat

    def _chunks(self, messages: Sequence[ChatMessage], lang: str) -> Iterable[Any]:
        """Start the plugin's best API for this request and return what it produces."""
        plugin = self._plugin
        if self._chat:
            chat = [message.as_dict() for message in messages]
            streaming = getattr(plugin, "stream_chat_utterances", None)
            if callable(streaming):
                return _as_chunks(_call_plugin(streaming, chat, lang))
            return _as_chunks(_call_plugin(plugin.continue_chat, chat, lang))
        question = last_user_text(messages)
        streaming = getattr(plugin, "stream_utterances", None)
        if callable(streaming):
            return _as_chunks(_call_plugin(streaming, question, lang))
        return _as_chunks(_call_plugin(plugin.get_spoken_answer, question, lang))

    def _failure(self, err: Exception) -> Exception:
        """Translate a plugin exception into the solver error tree."""
        if isinstance(err, OSError):  # includes timeouts and requests' connection errors
            return SolverUnavailable(f"solver plugin {self.solver_id!r} is unavailable: {err}")
        return SolverResponseError(f"solver plugin {self.solver_id!r} failed: {err}")

    def stream(self, messages: Sequence[ChatMessage], *, lang: str, cancel: CancelToken,
               conversation_id: str = "") -> Iterator[str]:
        """Yield the plugin's utterances, a space between them; nothing if it has no answer."""
        cancel.raise_if_cancelled()
        plugin_lang = standardize_lang_tag(normalize_lang(lang))
        try:
            iterator: Iterator[Any] = iter(self._chunks(messages, plugin_lang))
        except Exception as err:  # third-party plugin code: any exception means this solver failed
            raise self._failure(err) from err
        previous = ""
        try:
            while True:
                cancel.raise_if_cancelled()
                try:
                    chunk = next(iterator)
                except StopIteration:
                    return
                except Exception as err:  # as above: the plugin failed mid-stream
                    raise self._failure(err) from err
                if not isinstance(chunk, str) or not chunk.strip():
                    continue
                # OPM streams whole utterances with no separator; keep them apart when joined
                if previous and not previous[-1:].isspace() and not chunk[:1].isspace():
                    chunk = " " + chunk
                previous = chunk
                cancel.raise_if_cancelled()
                yield chunk
        finally:
            # stop a generating plugin, not only our reading of it
            close = getattr(iterator, "close", None)
            if callable(close):
                close()

    def close(self) -> None:
        """Shut the plugin down if it knows how."""
        shutdown = getattr(self._plugin, "shutdown", None)
        if callable(shutdown):
            try:
                shutdown()
            except Exception:  # closing must never fail the caller; keep the traceback in the log
                LOG.exception(f"solver plugin {self.solver_id!r} failed to shut down")
