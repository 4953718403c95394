"""Human-readable example recommendations: a user's recent history and the model's top items, with titles."""

from __future__ import annotations

import torch

from genrec.data.text import ItemTextError, item_texts


def _label(dataset, index: int, texts: list[str] | None) -> str:
    name = f"[{dataset.item_ids[index]}]"
    return f"{name} {texts[index][:70]}" if texts else name


@torch.no_grad()
def print_examples(model, datamodule, *, count: int = 3, part: str = "test", shown: int = 5) -> None:
    """Prints ``count`` users of a split part: their last items, the held-out item and the model's top items."""
    dataset = datamodule.dataset
    # The run's own item text template, if it set one (a tokenizer named from its settings).
    template = (getattr(datamodule, "hparams", {}).get("tokenizer_settings") or {}).get("template")
    try:
        texts = item_texts(dataset, template)[0] if dataset.items is not None else None
    except ItemTextError:  # items without text a template can render: the examples show their ids
        texts = None
    samples = datamodule.parts[part]
    batch = samples[list(range(min(count, len(samples))))]
    model.eval()
    out = model.recommend_batch({k: v.to(model.device) for k, v in batch.items()}, top_k=shown)
    for row in range(len(batch["target"])):
        history = [i for i in batch["history"][row].tolist() if i >= 0]
        print(f"\nuser {dataset.user_ids[int(batch['users'][row])]}: last items")
        for item in history[-3:]:
            print(f"    {_label(dataset, item, texts)}")
        target = int(batch["target"][row])
        print(f"  next item (held out): {_label(dataset, target, texts)}")
        print("  recommended:")
        for rank, (item, score) in enumerate(zip(out.items[row].tolist(), out.scores[row].tolist()), start=1):
            mark = "  <- hit" if item == target else ""
            print(f"    {rank}. {_label(dataset, item, texts)}  (log p {score:.2f}){mark}")
