"""The generative (seq2seq) recommender."""
