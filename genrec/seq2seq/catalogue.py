"""The catalogue a generative model is trained on and decodes into, handed from the datamodule to the model.

One typed object instead of attributes looked up on the datamodule: the IDs the decoder generates, the codes of
input-only modalities, optional content features, and the tokenizer artifact they came from.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from genrec.seq2seq.vocab import PAD_ID, CodeVocab
from genrec.tokenizer.artifact import SemanticIds


@dataclass(frozen=True)
class Catalogue:
    """Every item's semantic IDs and features.

    Attributes:
        item_codes: (n_items, l) int64, the IDs the decoder generates.
        input_codes: per input-only modality (MSCGRec), (n_items, l_m) int64 codes the encoder reads beside the ID.
        content: (n_items, d) float item features for systems that read item content (ColaRec), or None.
        semantic_ids: the tokenizer artifact of ``item_codes`` (its metrics are logged with the run), or None.
        input_artifacts: the tokenizer artifacts of ``input_codes`` (run records name their features), or empty.
    """

    item_codes: torch.Tensor
    input_codes: tuple[torch.Tensor, ...] = ()
    content: torch.Tensor | None = None
    semantic_ids: SemanticIds | None = None
    input_artifacts: tuple[SemanticIds, ...] = ()

    def __post_init__(self) -> None:
        n = self.item_codes.shape[0]
        if self.item_codes.dim() != 2:
            raise ValueError(f"item_codes must be (n_items, levels), got shape {tuple(self.item_codes.shape)}")
        object.__setattr__(self, "input_codes", tuple(self.input_codes))
        object.__setattr__(self, "input_artifacts", tuple(self.input_artifacts))
        for m, codes in enumerate(self.input_codes):
            if codes.dim() != 2 or codes.shape[0] != n:
                raise ValueError(f"input modality {m}: codes of shape {tuple(codes.shape)} for {n} items")
        if self.content is not None and (self.content.dim() != 2 or self.content.shape[0] != n):
            raise ValueError(f"content features of shape {tuple(self.content.shape)} for {n} items")

    @property
    def n_items(self) -> int:
        return int(self.item_codes.shape[0])

    def token_table(self, vocab: CodeVocab) -> torch.Tensor:
        """(n_items + 1, vocab.tokens_per_item) encoder tokens of every item (see :func:`item_token_table`)."""
        return item_token_table(vocab, self.item_codes, self.input_codes)


def item_token_table(
    vocab: CodeVocab, item_codes: torch.Tensor, input_codes: tuple[torch.Tensor, ...] | list[torch.Tensor] = ()
) -> torch.Tensor:
    """Encoder tokens of every item, plus a padding row so that item index -1 maps to pad tokens.

    Args:
        vocab: the token vocabulary.
        item_codes: (n_items, l) int64 semantic IDs (the ones the decoder generates).
        input_codes: per input-only modality of ``vocab``, (n_items, l_m) int64 codes, appended after the ID.

    Returns:
        (n_items + 1, vocab.tokens_per_item) int64; row ``n_items`` (index -1) is all pad.
    """
    if len(input_codes) != len(vocab.input_level_sizes):
        raise ValueError(f"vocab has {len(vocab.input_level_sizes)} input modalities, got codes for {len(input_codes)}")
    table = torch.cat(
        [vocab.encode(item_codes)] + [vocab.encode_input(m, c.to(item_codes.device)) for m, c in enumerate(input_codes)],
        dim=1,
    )
    return torch.cat([table, torch.full((1, table.shape[1]), PAD_ID, dtype=table.dtype, device=table.device)])
