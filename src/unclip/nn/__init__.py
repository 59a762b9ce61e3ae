"""Building blocks shared by the networks: norms, attention, timestep embeddings, ResBlocks, transformer."""
