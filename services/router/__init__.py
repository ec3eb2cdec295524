"""The router: flow control and replica choice in front of inference replicas."""
