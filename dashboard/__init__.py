"""The managers' dashboard: a read-only web page of the ledger's reports, on its own port."""
