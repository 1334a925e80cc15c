"""help() and inspect.signature show real signatures: the crossing's C methods
carry text signatures, and no default shows a sentinel object."""
from __future__ import annotations

import importlib
import inspect
import pydoc

import pytest

from grafos.mq.consumer import Consumer
from grafos.mq.producer import Producer
from grafos.mq.topic import TopicManager

MODULES = ("grafos.mq.topic", "grafos.mq.producer", "grafos.mq.consumer", "grafos.mq.group", "grafos.mq.dlq",
           "grafos.mq.offset", "grafos.mq.bound", "grafos.leasekit", "grafos.fabric", "grafos.aio")


def _params(f) -> list[tuple[str, object]]:
    return [(p.name, p.default) for p in inspect.signature(f).parameters.values()]


def test_the_crossings_methods_have_real_signatures():
    E = inspect.Parameter.empty
    assert _params(Producer.send)[1:] == [("mgr", E), ("value", E), ("headers", None), ("timeout", ...)]
    assert _params(Producer.send_keyed)[1:] == [("mgr", E), ("key", E), ("value", E), ("headers", None),
                                               ("timeout", ...)]
    assert _params(Consumer.poll)[1:] == [("mgr", E), ("max_messages", 100), ("timeout", 0.0), ("spin", None)]
    bound = TopicManager().producer("t")
    assert [n for n, _ in _params(bound.send)] == ["mgr", "value", "headers", "timeout"]


def test_help_mentions_the_per_call_timeout():
    text = pydoc.render_doc(Producer.send, renderer=pydoc.plaintext)
    assert "send(self, /, mgr, value, headers=None, *, timeout=Ellipsis)" in text
    assert "producer's timeout" in text.replace("\n", " ")     # wherever the docstring wraps


@pytest.mark.parametrize("module", MODULES)
def test_no_public_signature_shows_an_object_address(module):
    mod = importlib.import_module(module)
    shown = []
    for name, obj in vars(mod).items():
        if name.startswith("_") or getattr(obj, "__module__", None) != mod.__name__:
            continue
        targets = [obj] + ([v for k, v in vars(obj).items() if not k.startswith("_") and callable(v)]
                           if inspect.isclass(obj) else [])
        for t in targets:
            try:
                sig = str(inspect.signature(t))
            except (TypeError, ValueError):
                continue
            if " at 0x" in sig:
                shown.append(f"{name}: {sig}")
    assert shown == []
