"""The GraphSAGE encoder of MMGRec's graph features (``genrec.features.graph``): the bipartite user-item graph
as sparse mean operators, and the network over it (Hamilton et al., 2017; mean aggregator). Plain torch: no
dataset, no training loop.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class BipartiteGraph:
    """Distinct (user, item) edges of a user-item graph.

    Attributes:
        n_users: number of user nodes.
        n_items: number of item nodes.
        users: (e,) int64 in [0, n_users).
        items: (e,) int64 in [0, n_items); edge t joins ``users[t]`` and ``items[t]``.
    """

    n_users: int
    n_items: int
    users: Tensor
    items: Tensor

    @property
    def n_edges(self) -> int:
        return self.users.numel()

    def mean_operators(self) -> tuple[Tensor, Tensor]:
        """Sparse row-normalised adjacencies: ``user_mean`` (n_users, n_items) and ``item_mean`` (n_items, n_users).

        ``user_mean @ h_items`` is each user's mean over its items (a zero row for a user with none), and likewise
        for ``item_mean``.
        """
        ones = torch.ones(self.n_edges)
        user_degree = torch.zeros(self.n_users).index_add_(0, self.users, ones)
        item_degree = torch.zeros(self.n_items).index_add_(0, self.items, ones)
        user_mean = torch.sparse_coo_tensor(
            torch.stack([self.users, self.items]), 1 / user_degree[self.users], (self.n_users, self.n_items),
            check_invariants=True,
        ).coalesce()
        item_mean = torch.sparse_coo_tensor(
            torch.stack([self.items, self.users]), 1 / item_degree[self.items], (self.n_items, self.n_users),
            check_invariants=True,
        ).coalesce()
        return user_mean, item_mean

    def fingerprint(self) -> str:
        """sha256 of the node counts and the edges, for cache keys."""
        h = hashlib.sha256(json.dumps([self.n_users, self.n_items]).encode())
        h.update(self.users.numpy().tobytes())
        h.update(self.items.numpy().tobytes())
        return h.hexdigest()


class SAGELayer(nn.Module):
    """One bipartite GraphSAGE layer with the mean aggregator, before its activation:
    ``h_u' = W_user [h_u ; mean_{i ~ u} h_i]`` and ``h_i' = W_item [h_i ; mean_{u ~ i} h_u]``.

    Users and items are different kinds of node, so each side has its own weights.
    """

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.user = nn.Linear(2 * dim_in, dim_out)
        self.item = nn.Linear(2 * dim_in, dim_out)

    def forward(self, users: Tensor, items: Tensor, user_mean: Tensor, item_mean: Tensor) -> tuple[Tensor, Tensor]:
        """
        Args:
            users: (n_users, d_in) float.
            items: (n_items, d_in) float.
            user_mean, item_mean: the sparse operators of :meth:`BipartiteGraph.mean_operators`.

        Returns:
            (n_users, d_out) and (n_items, d_out), both from the *input* states (a synchronous update).
        """
        new_users = self.user(torch.cat([users, torch.sparse.mm(user_mean, items)], dim=1))
        new_items = self.item(torch.cat([items, torch.sparse.mm(item_mean, users)], dim=1))
        return new_users, new_items


class GraphSAGE(nn.Module):
    """Item and user representations from a bipartite graph and item content.

    Item nodes enter as a linear projection of their features, user nodes as learned embeddings; ``layers`` SAGE
    layers follow, with LeakyReLU between them but not after the last, and the outputs are L2-normalised.

    Why normalise: BPR on raw dot products lets the norm soak up popularity, and the tokenizer's input would then
    mix "how popular" with "what it is like"; the default per-source L2 normalisation downstream would discard the
    norm anyway. Training on the unit sphere (cosine / temperature) puts everything the encoder learns into the
    direction, which is exactly what the RQ-VAE is then given. The last layer stays linear so the outputs can
    point anywhere on the sphere, not only into the positive orthant.

    Args:
        n_users: user nodes.
        input_dim: item feature width.
        dim: width of every layer and of the output.
        layers: number of SAGE layers.
    """

    def __init__(self, *, n_users: int, input_dim: int, dim: int = 64, layers: int = 2) -> None:
        super().__init__()
        if min(n_users, input_dim, dim, layers) < 1:
            raise ValueError(
                f"n_users, input_dim, dim and layers must be >= 1, got {n_users}, {input_dim}, {dim}, {layers}"
            )
        self.item_input = nn.Linear(input_dim, dim)
        self.user_input = nn.Embedding(n_users, dim)
        nn.init.normal_(self.user_input.weight, std=dim**-0.5)
        self.layers = nn.ModuleList(SAGELayer(dim, dim) for _ in range(layers))

    def forward(self, features: Tensor, user_mean: Tensor, item_mean: Tensor) -> tuple[Tensor, Tensor]:
        """
        Args:
            features: (n_items, input_dim) float item content.
            user_mean, item_mean: the sparse operators of :meth:`BipartiteGraph.mean_operators`.

        Returns:
            users (n_users, dim) and items (n_items, dim), float, unit rows.
        """
        users, items = self.user_input.weight, self.item_input(features)
        for j, layer in enumerate(self.layers):
            users, items = layer(users, items, user_mean, item_mean)
            if j < len(self.layers) - 1:
                users, items = F.leaky_relu(users, 0.2), F.leaky_relu(items, 0.2)
        return F.normalize(users, dim=1), F.normalize(items, dim=1)
