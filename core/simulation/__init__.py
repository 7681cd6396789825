"""The simulated world: catalogue and users, behaviour and shifts, and the closed loop that runs a day of
simulation, ETL, monitoring and policy."""
