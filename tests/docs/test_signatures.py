"""help() and inspect.signature show real signatures: the crossing's C methods
carry text signatures, and no default shows a sentinel object."""
from __future__ import annotations

import importlib
import inspect
import pydoc

import pytest

from grafos._crossing import PRODUCER_TIMEOUT
from grafos.aio import AsyncConsumer, AsyncProducer
from grafos.mq.bound import BoundConsumer, BoundProducer
from grafos.mq.consumer import Consumer
from grafos.mq.producer import Producer
from grafos.mq.topic import TopicManager

MODULES = ("grafos.mq.topic", "grafos.mq.producer", "grafos.mq.consumer", "grafos.mq.group", "grafos.mq.dlq",
           "grafos.mq.offset", "grafos.mq.bound", "grafos.leasekit", "grafos.fabric", "grafos.aio")


def _params(f) -> list[tuple[str, object]]:
    return [(p.name, p.default) for p in inspect.signature(f).parameters.values()]


def test_the_crossings_methods_have_real_signatures():
    E = inspect.Parameter.empty
    assert _params(Producer.send)[1:] == [("mgr", E), ("value", E), ("headers", None), ("timeout", PRODUCER_TIMEOUT)]
    assert _params(Producer.send_keyed)[1:] == [("mgr", E), ("key", E), ("value", E), ("headers", None),
                                               ("timeout", PRODUCER_TIMEOUT)]
    assert _params(Consumer.poll)[1:] == [("mgr", E), ("max_messages", 100), ("timeout", 0.0), ("spin", None)]
    bound = TopicManager().producer("t")
    assert [n for n, _ in _params(bound.send)] == ["mgr", "value", "headers", "timeout"]


def test_the_per_call_timeout_should_show_the_producers_and_be_documented():
    text = pydoc.render_doc(Producer.send, renderer=pydoc.plaintext)
    assert "send(self, /, mgr, value, headers=None, *, timeout=self.timeout)" in text
    assert "producer's timeout" in text.replace("\n", " ")     # wherever the docstring wraps
    # the crossing's default and the Python send paths' are one object
    for f in (Producer.send, Producer.send_keyed, Producer.send_batch, BoundProducer.send_batch):
        assert inspect.signature(f).parameters["timeout"].default is PRODUCER_TIMEOUT, f


def _public_callables(cls: type) -> list[tuple[str, object]]:
    """Every public callable of ``cls``, inherited ones (the crossing's C methods) included."""
    return [(k, getattr(cls, k)) for k in dir(cls) if not k.startswith("_") and callable(getattr(cls, k))]


@pytest.mark.parametrize("module", MODULES)
def test_no_public_signature_shows_a_sentinel_object(module):
    mod = importlib.import_module(module)
    shown = []
    for name, obj in vars(mod).items():
        if name.startswith("_") or getattr(obj, "__module__", None) != mod.__name__:
            continue
        targets = [(name, obj)] + ([(f"{name}.{k}", v) for k, v in _public_callables(obj)]
                                   if inspect.isclass(obj) else [])
        for where, t in targets:
            try:
                sig = str(inspect.signature(t))
            except (TypeError, ValueError):
                continue
            if " at 0x" in sig or "Ellipsis" in sig:
                shown.append(f"{where}: {sig}")
    assert shown == []


@pytest.mark.parametrize("cls, base", [(BoundProducer, Producer), (BoundConsumer, Consumer)])
def test_a_bound_handles_calls_should_show_their_parameters_without_the_manager(cls, base):
    mgr = TopicManager()
    mgr.create("t")
    handle = mgr.producer("t") if cls is BoundProducer else mgr.consumer("t")
    for name, f in _public_callables(cls):
        params = inspect.signature(f).parameters.values()
        assert not [p for p in params if p.kind is p.VAR_POSITIONAL], f"{name}{inspect.signature(f)}"
        plain = [p.name for p in inspect.signature(getattr(base, name)).parameters.values()]
        if "mgr" in plain and name not in ("send", "send_keyed", "poll"):   # the crossing's take it in C
            assert [p.name for p in params] == [n for n in plain if n != "mgr"], name
            assert [p.name for p in inspect.signature(getattr(handle, name)).parameters.values()] == \
                [n for n in plain if n not in ("self", "mgr")], name
    assert list(inspect.signature(BoundConsumer.wait_request).parameters) == ["self", "waiter", "timeout"]


@pytest.mark.parametrize("cls", [AsyncProducer, AsyncConsumer])
def test_the_async_adapters_calls_should_show_their_parameters(cls):
    spread = {name: str(inspect.signature(f)) for name, f in _public_callables(cls)
              if any(p.kind is p.VAR_POSITIONAL for p in inspect.signature(f).parameters.values())}
    assert spread == {}
    send = AsyncProducer.send_keyed if cls is AsyncProducer else AsyncConsumer.seek_partition
    assert "mgr" not in inspect.signature(send).parameters        # the short form: mgr is optional


def test_every_public_call_of_the_crossing_should_have_a_text_signature():
    from grafos import _fast
    missing = []
    for owner in (_fast, _fast.SendPath, _fast.PollPath, _fast.Binding, _fast.Span):
        for name, f in vars(owner).items():
            if name.startswith("_") or not inspect.isroutine(f):
                continue
            try:
                inspect.signature(f)
            except ValueError:
                missing.append(f"{getattr(owner, '__name__', owner)}.{name}")
    assert missing == []
