"""Generated contracts (maas.v1); the `maas` CLI lives in maas_cli."""
