"""Generated from protos/maas/v1 by `make protos`; do not edit."""
