"""Bounds of one embedding request, shared by the gateway (checked before
quota is reserved) and the inference service (checked again at the engine)."""

# Inputs in one request: each is a sequence in the engine's batch, and one
# request must not take every slot of a replica (max_num_seqs' default is 64,
# so two full requests fill it; OpenAI's own limit is 2048).
MAX_EMBED_INPUTS = 128
