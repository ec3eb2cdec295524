"""Models built here from nothing downloaded, for the local stack, tests and benchmarks."""
