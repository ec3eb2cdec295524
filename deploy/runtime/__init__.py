"""What production containers run beside the services: the health check, replica sync."""
