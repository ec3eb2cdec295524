"""The `maas` command-line client and the small async client it and the local stack use."""
