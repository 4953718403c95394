"""Top-K ranking metrics for leave-one-out evaluation (one relevant item per user)."""

from __future__ import annotations

import torch

RECALL_KS = (1, 5, 10, 20)
NDCG_KS = (5, 10, 20)


def target_rank(items: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """0-based rank of each user's target in its ranked list, ``k`` where it is absent.

    Args:
        items: (b, k) int64 ranked item indices, best first (-1 for empty slots).
        target: (b,) int64 target item index.

    Returns:
        (b,) int64 in [0, k].
    """
    hit = items == target.unsqueeze(1)  # (b, k)
    k = items.shape[1]
    positions = torch.arange(k, device=items.device).expand_as(items)
    return torch.where(hit, positions, k).min(dim=1).values


def ranking_metrics(
    items: torch.Tensor,
    target: torch.Tensor,
    *,
    recall_ks: tuple[int, ...] = RECALL_KS,
    ndcg_ks: tuple[int, ...] = NDCG_KS,
) -> dict[str, torch.Tensor]:
    """Per-user Recall@K and NDCG@K (with one relevant item, NDCG@K = 1 / log2(rank + 2) inside the top K).

    Returns:
        name -> (b,) float32 per-user values; average them (weighted by users) to report.
    """
    k = items.shape[1]
    if max((*recall_ks, *ndcg_ks)) > k:
        raise ValueError(f"metrics up to @{max((*recall_ks, *ndcg_ks))} need at least that many items, got {k}")
    rank = target_rank(items, target).float()
    out = {f"recall@{c}": (rank < c).float() for c in recall_ks}
    gain = 1.0 / torch.log2(rank + 2.0)
    out.update({f"ndcg@{c}": torch.where(rank < c, gain, 0.0) for c in ndcg_ks})
    return out


def list_errors(items: torch.Tensor, n_items: int) -> dict[str, torch.Tensor]:
    """Per-user fraction of invalid (outside the catalogue) and repeated items in a top-K list.

    Returns:
        ``invalid`` and ``repeated``, each (b,) float32 in [0, 1]; both must be 0 for a constrained decoder.
    """
    k = items.shape[1]
    invalid = ((items < 0) | (items >= n_items)).float().mean(1)
    ordered = items.sort(dim=1).values
    repeated = ((ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)).float().sum(1) / k
    return {"invalid": invalid, "repeated": repeated}

