"""The ledger: Dealflow's own SQL database, for what must outlive a workflow run.

Temporal holds what is running and forgets a closed deal when the namespace
retention ends. The ledger keeps what must be remembered, and what every send
must read cheaply: the send ledger (one row per Message-ID) today. SQLite is the
embedded default, PostgreSQL the production database; only activities and the
CLI touch it, never workflow code.
"""
