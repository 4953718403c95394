"""Token vocabulary of a semantic-ID seq2seq model.

Layout (TIGER §3.2: every code level has its own token range)::

    0                      pad (also T5's decoder start token)
    1                      eos
    2 .. 2+sum(sizes)      code tokens, level by level: token = offsets[l] + code
    then                   optional hashed user buckets
    then                   optional input-only code levels: the semantic IDs of other modalities that the encoder
                           reads but the decoder never emits (MSCGRec), modality by modality, level by level
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PAD_ID = 0
EOS_ID = 1
N_SPECIAL = 2


@dataclass(frozen=True)
class CodeVocab:
    """Maps (level, code) pairs and user buckets to token ids.

    Attributes:
        level_sizes: number of codes on each level (the last may be the collision level).
        n_user_buckets: number of hashed user-id tokens (0 disables them).
        input_level_sizes: per extra input modality, the number of codes on each of its levels (empty: none).
    """

    level_sizes: tuple[int, ...]
    n_user_buckets: int = 0
    input_level_sizes: tuple[tuple[int, ...], ...] = ()

    def __post_init__(self) -> None:
        if not self.level_sizes or any(s < 1 for s in self.level_sizes):
            raise ValueError(f"level_sizes must be positive, got {self.level_sizes}")
        if self.n_user_buckets < 0:
            raise ValueError(f"n_user_buckets must be >= 0, got {self.n_user_buckets}")
        # Frozen: normalise lists from configs to tuples through object.__setattr__.
        object.__setattr__(self, "input_level_sizes", tuple(tuple(int(s) for s in m) for m in self.input_level_sizes))
        for m, sizes in enumerate(self.input_level_sizes):
            if not sizes or any(s < 1 for s in sizes):
                raise ValueError(f"input modality {m}: level sizes must be positive, got {sizes}")

    @property
    def levels(self) -> int:
        return len(self.level_sizes)

    @property
    def offsets(self) -> tuple[int, ...]:
        """First token id of each level."""
        out, start = [], N_SPECIAL
        for size in self.level_sizes:
            out.append(start)
            start += size
        return tuple(out)

    @property
    def user_offset(self) -> int:
        return N_SPECIAL + sum(self.level_sizes)

    @property
    def input_offsets(self) -> tuple[tuple[int, ...], ...]:
        """First token id of each level of each input-only modality."""
        out, start = [], self.user_offset + self.n_user_buckets
        for sizes in self.input_level_sizes:
            levels = []
            for size in sizes:
                levels.append(start)
                start += size
            out.append(tuple(levels))
        return tuple(out)

    @property
    def size(self) -> int:
        """Total vocabulary size (the model's embedding rows)."""
        return self.user_offset + self.n_user_buckets + sum(sum(m) for m in self.input_level_sizes)

    @property
    def tokens_per_item(self) -> int:
        """Encoder tokens of one history item: its semantic ID, then the codes of every input-only modality."""
        return self.levels + sum(len(m) for m in self.input_level_sizes)

    def encode_input(self, modality: int, codes: torch.Tensor) -> torch.Tensor:
        """Tokens of input-only modality ``modality``: (..., l_m) codes -> (..., l_m) token ids."""
        sizes = self.input_level_sizes[modality]
        if codes.shape[-1] != len(sizes):
            raise ValueError(f"input modality {modality} has {len(sizes)} levels, got codes with {codes.shape[-1]}")
        offsets = torch.tensor(self.input_offsets[modality], dtype=torch.long, device=codes.device)
        return codes.long() + offsets

    def encode(self, codes: torch.Tensor) -> torch.Tensor:
        """Turns codes into tokens.

        Args:
            codes: (..., l) int64, codes[..., j] in [0, level_sizes[j]).

        Returns:
            (..., l) int64 token ids.
        """
        offsets = torch.tensor(self.offsets, dtype=torch.long, device=codes.device)
        return codes.long() + offsets

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`encode`: (..., l) token ids -> (..., l) codes."""
        offsets = torch.tensor(self.offsets, dtype=torch.long, device=tokens.device)
        return tokens.long() - offsets

    def user_token(self, user_index: torch.Tensor) -> torch.Tensor:
        """Hashed user bucket token for dense user indices (TIGER §4: 2000 buckets)."""
        if self.n_user_buckets == 0:
            raise ValueError("this vocabulary has no user buckets (n_user_buckets=0)")
        return self.user_offset + torch.remainder(user_index.long(), self.n_user_buckets)


def token_roles(input_ids: torch.Tensor, vocab: CodeVocab) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Item slot, code position and user flag of every encoder token.

    Args:
        input_ids: (b, t) int64 encoder tokens as :func:`genrec.seq2seq.data.encode_histories` lays them out:
            an optional user token first, then items in blocks of ``vocab.tokens_per_item`` aligned from the right.
        vocab: the token vocabulary.

    Returns:
        ``slot`` (b, t) int64 item index counted from the most recent item (0) backwards, ``code`` (b, t) int64
        position of the token within its item in ``[0, vocab.tokens_per_item)``, ``user`` (b, t) bool user tokens.
    """
    t = input_ids.shape[1]
    per_item = vocab.tokens_per_item
    from_right = torch.arange(t - 1, -1, -1, device=input_ids.device)  # (t,)
    slot = (from_right // per_item).expand_as(input_ids)
    code = (per_item - 1 - from_right % per_item).expand_as(input_ids)
    user = (input_ids >= vocab.user_offset) & (input_ids < vocab.user_offset + vocab.n_user_buckets)
    return slot, code, user
