"""Ways to run the mesh, in three rooms: `runtime` (what production containers
run beside the services), `local` (`make run` and its throwaway CA) and
`checks` (the static checks of compose, Kubernetes and the Dockerfile)."""
