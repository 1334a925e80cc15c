"""Modules the tests share and the processes they start run: helpers, the
``*_procs`` targets of ``multiprocessing`` children and the scripts run with
``python tests/helpers/NAME.py``. Imported as ``helpers.NAME``: ``tests/`` is on
``sys.path`` (pytest's ``pythonpath``), and spawned children inherit the
parent's ``sys.path``, so a pickled ``helpers.NAME.function`` resolves there."""
