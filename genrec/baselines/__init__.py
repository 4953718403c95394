"""Non-generative baselines: SASRec, whose item embeddings also serve as collaborative features for semantic IDs."""
