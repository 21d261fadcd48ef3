"""The ledger: Dealflow's own SQL database, for what must outlive a workflow run.

Temporal holds what is running and forgets a closed deal when the namespace
retention ends. The ledger keeps what must be remembered, and what every send
must read cheaply: the send ledger (one row per Message-ID) and the suppression
list. SQLite is the embedded default, PostgreSQL the production database; only
activities, the endpoints and the CLI touch it, never workflow code.
"""


class LedgerProblem(Exception):
    """The ledger cannot be used; the message says what is wrong and what to do."""
