"""The analytics warehouse (DuckDB file): its tables and transactions, the incremental ETL that fills it
from the operational store, and the training dataset read from it."""
