"""The operational stores: the SQLite database the product writes (users, ratings, events, the serving log,
consent), the validated write API, the ML metadata database, the service clock and the data folder's lock."""
