"""Privacy: consent, export, erasure, retention, key rotation, operators and crash recovery; orchestrates
every store's own erase/export/rekey functions."""
