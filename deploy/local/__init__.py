"""What runs on a developer machine: `make run`'s launcher, the throwaway CA, a test Postgres."""
