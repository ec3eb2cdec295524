"""Static checks of docker-compose.yml, deploy/k8s/ and the Dockerfile: no engine, no cluster."""
