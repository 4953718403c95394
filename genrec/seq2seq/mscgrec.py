"""MSCGRec: one history item = the codes of several semantic-ID modalities; only the collaborative ID is decoded.

Vandenhirtz et al., "Multimodal Generative Recommendation for Fusing Semantic and Collaborative Signals" (2026):

* every item has one semantic ID per modality, each from its own residual quantizer (here: the collaborative ID
  from SASRec item embeddings, which the model generates, and input-only text, and image where a dataset has
  images); the datamodule lays them out item by item (``SemanticIdData(input_modalities=...)``);
* the encoder reads each history item as all of its modality codes, with a learned position embedding for the
  item (how recent) and one for the code (which modality and level);
* during training, whole modalities of history items are masked at random, so the model learns to use each one
  alone and does not lean on one;
* the decoder generates only the collaborative ID, trained with the constrained softmax and decoded with the
  matching normalisation (``constrained_softmax=True``, see :mod:`genrec.seq2seq.losses`).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import T5ForConditionalGeneration

from genrec.seq2seq.encoders import EncoderOutput, HistoryEncoder
from genrec.seq2seq.vocab import CodeVocab, token_roles


class MultimodalHistory(HistoryEncoder):
    """MSCGRec's encoder (see the module docstring); pair it with ``constrained_softmax: true`` as the paper does.

    Args:
        modality_dropout: probability that one modality of one history item is hidden in a training sample; an
            item never loses all of its modalities (its generated ID then stays).
    """

    system_name = "MSCGRec"

    def __init__(self, *, modality_dropout: float = 0.2) -> None:
        super().__init__(modality_dropout=modality_dropout)
        if not 0.0 <= modality_dropout < 1.0:
            raise ValueError(f"modality_dropout must be in [0, 1), got {modality_dropout}")
        self.modality_dropout = modality_dropout

    def bind(self, t5: T5ForConditionalGeneration, vocab: CodeVocab, *, n_items: int | None, max_len: int | None) -> None:
        if max_len is None:
            raise ValueError("MultimodalHistory needs max_len (linked from the datamodule by the CLI)")
        self.vocab, self.max_len = vocab, max_len
        d = t5.config.d_model
        self.item_position = nn.Embedding(max_len, d)
        self.code_position = nn.Embedding(vocab.tokens_per_item, d)
        nn.init.normal_(self.item_position.weight, std=0.02)
        nn.init.normal_(self.code_position.weight, std=0.02)
        # Modality of each code position: 0 for the generated ID, then one per input-only modality.
        sizes = [vocab.levels] + [len(m) for m in vocab.input_level_sizes]
        modality = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
        self.register_buffer("code_modality", modality, persistent=False)

    @property
    def n_modalities(self) -> int:
        return 1 + len(self.vocab.input_level_sizes)

    def modality_mask(self, slot: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        """(b, t) bool, True for tokens kept after hiding random (item, modality) pairs (training only)."""
        b, t = slot.shape
        n_slots = -(-t // self.vocab.tokens_per_item)  # from the shape: no host sync
        hide = torch.rand(b, n_slots, self.n_modalities, device=slot.device) < self.modality_dropout
        hide[..., 0] &= ~hide[..., 1:].all(-1)  # an item keeps at least its generated ID's modality
        modality = self.code_modality[code]  # (b, t)
        return ~hide[torch.arange(b, device=slot.device)[:, None], slot, modality]

    def forward(self, t5: T5ForConditionalGeneration, batch: dict) -> EncoderOutput:
        input_ids, mask = batch["input_ids"], batch["attention_mask"]
        slot, code, user = token_roles(input_ids, self.vocab)
        slot = slot.clamp(max=self.max_len - 1)
        positions = self.item_position(slot) + self.code_position(code)
        x = t5.shared(input_ids) + positions * (~user)[..., None]  # the user token has no item position
        if self.training and self.modality_dropout > 0:
            mask = mask * (self.modality_mask(slot, code) | user).long()
        hidden = t5.encoder(inputs_embeds=x, attention_mask=mask).last_hidden_state
        return EncoderOutput(hidden, mask)
