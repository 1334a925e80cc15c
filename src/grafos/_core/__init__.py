"""The binding layer's typed wrappers of the compiled core (``grafos._native``).

The Python that calls the core lives here, in the error table
(:mod:`grafos._check`), in the crossing (:mod:`grafos._crossing`) and in the
handles of the fabric, its rings and their readers (:mod:`grafos.fabric`,
:mod:`grafos.partition`, :mod:`grafos.reader`). Everything above calls typed
Python functions and classes and never holds the core's ``ffi`` or ``lib``;
``tests/test_binding_layer.py`` keeps it so.

One module per thing the core holds: :mod:`.layout` (its sizes, flags and
policy numbers), :mod:`.codes` (its return codes).
"""
