"""Prefix index and constrained beam search over semantic IDs (pure tensor functions)."""

from genrec.decoding.beam_search import BeamSearchOutput, beam_search, score_items
from genrec.decoding.prefix_index import PrefixIndex

__all__ = ["BeamSearchOutput", "PrefixIndex", "beam_search", "score_items"]
