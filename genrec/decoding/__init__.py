"""Prefix index and constrained beam search over semantic IDs, for any model behind a :class:`DecoderStep`."""

from genrec.decoding.beam_search import BeamSearchOutput, DecoderStep, beam_search
from genrec.decoding.graphs import CudaGraph
from genrec.decoding.prefix_index import PrefixIndex

__all__ = ["BeamSearchOutput", "CudaGraph", "DecoderStep", "PrefixIndex", "beam_search"]
