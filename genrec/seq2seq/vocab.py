"""Token vocabulary of a semantic-ID seq2seq model.

Layout (TIGER §3.2: every code level has its own token range)::

    0                      pad (also T5's decoder start token)
    1                      eos
    2 .. 2+sum(sizes)      code tokens, level by level: token = offsets[l] + code
    then                   optional hashed user buckets
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
    """

    level_sizes: tuple[int, ...]
    n_user_buckets: int = 0

    def __post_init__(self) -> None:
        if not self.level_sizes or any(s < 1 for s in self.level_sizes):
            raise ValueError(f"level_sizes must be positive, got {self.level_sizes}")
        if self.n_user_buckets < 0:
            raise ValueError(f"n_user_buckets must be >= 0, got {self.n_user_buckets}")

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
    def size(self) -> int:
        """Total vocabulary size (the model's embedding rows)."""
        return self.user_offset + self.n_user_buckets

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
