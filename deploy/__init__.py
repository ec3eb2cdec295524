"""Ways to run the mesh: the local process stack, compose files, images."""
