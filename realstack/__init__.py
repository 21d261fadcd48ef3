"""Real local processes for the tests, the benchmarks and the soak.

The Temporal dev server, the product's worker as a subprocess, SMTP relays (in this
process, or in one of their own) and the waits that go with them. Nothing here runs
in production; ``devstack`` is the embedded stack of ``worker.py --dev`` these build on.

- ``waiting``: ``wait_for`` a condition with a generous bound, never a fixed time.
- ``child``: one restartable child process with a log file per start.
- ``temporal``: the dev server with its log in a file, and one that is SIGKILLed and
  started again on the same ports and SQLite file.
- ``deployment``: the ``DEALFLOW_*`` settings of a worker pointed at such a stack.
- ``worker``: ``python worker.py`` as production runs it.
- ``relay``: aiosmtpd in this process, recording what it accepts.
- ``relay_process``: aiosmtpd in a process of its own, reporting each accepted message.
- ``stack``: a dev server, a client, a relay and a migrated SQLite ledger in one folder.
"""
