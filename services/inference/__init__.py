"""The inference service: one vLLM engine serving one model."""
