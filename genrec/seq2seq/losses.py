"""Training losses shared by the generative recommenders.

- :func:`constrained_cross_entropy`: MSCGRec's constrained sequence learning, the softmax of each step normalised
  over the codes that extend the target's prefix to a real item (read off the decoding prefix index);
- :func:`prefix_contrastive_loss`: pulls together items that share a semantic-ID prefix (ColaRec).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from genrec.decoding.prefix_index import PrefixIndex
from genrec.seq2seq.vocab import CodeVocab


def valid_code_mask(index: PrefixIndex, codes: torch.Tensor) -> list[torch.Tensor]:
    """Which codes may follow each teacher-forced prefix of ``codes``.

    Args:
        index: prefix index of the catalogue, on the device of ``codes``.
        codes: (b, l) int64 target semantic IDs (each a catalogue item).

    Returns:
        One (b, k_l) bool mask per level ``l``: True where ``codes[:, :l]`` followed by that code is a prefix of
        some catalogue item.
    """
    nodes = torch.zeros(codes.shape[0], dtype=torch.long, device=codes.device)
    invalid = torch.zeros(codes.shape[0], dtype=torch.bool, device=codes.device)
    masks = []
    for level in range(index.levels):
        child = index.children(level, nodes)  # (b, k)
        masks.append(child >= 0)
        nodes = child.gather(1, codes[:, level : level + 1])[:, 0]
        # An invalid target leaves node -1; park it on node 0 and report once after the loop (one host sync).
        invalid |= nodes < 0
        nodes = nodes.clamp(min=0)
    if bool(invalid.any()):
        row = int(invalid.nonzero()[0])
        raise ValueError(f"target {codes[row].tolist()} (row {row}) is not a catalogue item's semantic ID")
    return masks


def constrained_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, index: PrefixIndex, vocab: CodeVocab, *, reduction: str = "mean"
) -> torch.Tensor:
    """Cross-entropy whose softmax at step ``l`` runs over the valid level-``l`` codes given the target prefix only.

    The full-vocabulary loss spends part of its gradient pushing down tokens that constrained decoding can never
    emit (other levels' codes, prefixes no item has); this one puts exactly zero probability on them, so all of the
    signal goes into ranking real continuations (MSCGRec, "constrained sequence learning").

    Args:
        logits: (b, l, vocab) decoder logits, teacher-forced.
        labels: (b, l) int64 target tokens (``vocab.encode`` of catalogue items' IDs).
        index: prefix index of the catalogue, on the device of ``labels``.
        vocab: the token vocabulary.
        reduction: ``"mean"`` over targets and levels, or ``"none"`` for the (b, l) per-step losses.

    Returns:
        The loss (scalar, or (b, l) with ``reduction="none"``).
    """
    codes = vocab.decode(labels)
    masks = valid_code_mask(index, codes)
    losses = []
    for level, (size, offset) in enumerate(zip(vocab.level_sizes, vocab.offsets)):
        level_logits = logits[:, level, offset : offset + size].float().masked_fill(~masks[level], float("-inf"))
        losses.append(F.cross_entropy(level_logits, codes[:, level], reduction="none"))
    out = torch.stack(losses, dim=1)
    return out.mean() if reduction == "mean" else out


def prefix_contrastive_loss(
    representations: torch.Tensor, codes: torch.Tensor, *, prefix_len: int = 1, temperature: float = 0.1
) -> torch.Tensor:
    """Supervised contrastive loss where items sharing their first ``prefix_len`` codes are positives.

    Each item's loss is ``-mean over positives p of log softmax_j(sim(i, j) / t)[p]`` over the other items of the
    batch; items without a positive in the batch do not contribute.

    Args:
        representations: (b, d) float item representations.
        codes: (b, l) int64 their semantic IDs.
        prefix_len: codes of the shared prefix that makes two items positives.
        temperature: softmax temperature on cosine similarities.

    Returns:
        Scalar loss (0 when no item has a positive).
    """
    z = F.normalize(representations.float(), dim=-1)
    sim = z @ z.T / temperature  # (b, b)
    self_mask = torch.eye(len(z), dtype=torch.bool, device=z.device)
    prefix = codes[:, :prefix_len]
    positive = (prefix[:, None, :] == prefix[None, :, :]).all(-1) & ~self_mask  # (b, b)
    log_prob = F.log_softmax(sim.masked_fill(self_mask, float("-inf")), dim=1).masked_fill(self_mask, 0.0)
    n_pos = positive.sum(1)
    has = n_pos > 0
    if not bool(has.any()):
        return representations.sum() * 0.0
    per_item = -(log_prob * positive).sum(1)[has] / n_pos[has]
    return per_item.mean()
