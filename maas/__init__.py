"""Client side of the mesh: generated contracts (maas.v1) and the `maas` CLI."""
