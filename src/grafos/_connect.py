"""``grafos.connect``: one call that opens a bus, whichever backend holds it.
It sits above both backends (the shared-memory bus and the JetStream bus), so
neither imports the other."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from . import _validate
from .mq.topic import TopicManager

if TYPE_CHECKING:     # imported when called: the nats extra is optional
    from .jetstream.manager import JetStreamManager

__all__ = ["connect", "connect_servers"]



def connect(target: str | Sequence[str] | None = None, **options: Any) -> TopicManager | JetStreamManager:
    """Open a bus: ``connect()`` an in-process one; ``connect("orders")`` the named
    shared-memory bus ``orders`` (created if missing); ``connect("/var/lib/bus.grafos")``
    (a path: it has a ``/``) a file-backed one; ``connect("nats://127.0.0.1:4222")``
    (or a list of URLs for a cluster) the bus on NATS JetStream. ``options`` go
    to :meth:`TopicManager.open <grafos.mq.topic.TopicManager.open>` (``size``,
    ...) or, on a server, to :func:`connect_servers`."""
    if target is None:
        return TopicManager(**options)
    if isinstance(target, (list, tuple)) or isinstance(target, str) and "://" in target:
        return connect_servers(target, **options)
    if not isinstance(target, str):
        raise _validate.InvalidType(f"target must be a bus name, a path or a nats:// URL (or a list of them), "
                                    f"not {type(target).__name__}")
    if "/" in target:
        return TopicManager.open(path=target, **options)
    return TopicManager.open(target, **options)


def connect_servers(servers: str | Sequence[str], **options: Any) -> JetStreamManager:
    """The bus on NATS JetStream: ``connect_servers("nats://127.0.0.1:4222")`` (a
    list of URLs for a cluster). Options: ``replicas=`` (3 on a 3-node
    cluster), ``timeout=`` (seconds every call may wait, default 5),
    ``age_limit=`` and the connection options of :func:`nats.connect`
    (``user``, ``password``, ``token``, ``user_credentials``, ``tls``, ...).
    Needs the ``nats`` extra: ``pip install "grafos[nats]"``."""
    try:
        from .jetstream.manager import JetStreamManager
    except ModuleNotFoundError as e:
        if e.name is not None and e.name.split(".")[0] == "nats":
            raise ModuleNotFoundError('the JetStream bus needs nats-py: pip install "grafos[nats]"',
                                      name=e.name) from None
        raise
    return JetStreamManager(servers, **options)


# the spelling on the shared-memory manager: set here, where both backends are in reach
TopicManager.connect = staticmethod(connect_servers)
