"""The anomaly service: ingests request events, watches them for trouble."""
