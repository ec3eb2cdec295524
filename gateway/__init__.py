"""The public face of the mesh: maas.v1.Gateway."""
