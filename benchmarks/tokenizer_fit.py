"""Fits RQ-KMeans and the RQ-VAE on one dataset's item features and prints one JSON line per method.

Each line: method, fit seconds, reconstruction error (fraction of variance unexplained), codebook usage per level,
collision rate before handling, largest collision group, and the device. The artifacts go to a temporary folder.

Usage:
    PYTHONPATH=. python benchmarks/tokenizer_fit.py --dataset amazon-beauty
    PYTHONPATH=. python benchmarks/tokenizer_fit.py --features item_features.npy --rqvae-epochs 20
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path


from genrec.provenance import provenance


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="amazon-beauty", help="dataset for the text embeddings")
    parser.add_argument("--features", default=None, help="an (n_items, d) .npy file to use instead of text")
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--codebook-size", type=int, default=256)
    parser.add_argument("--rqvae-epochs", type=int, default=100, help="0 skips the RQ-VAE")
    parser.add_argument("--collision", default="extra_code", choices=["extra_code", "reassign"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import lightning.pytorch as pl

    from genrec.tokenizer.datamodule import ItemFeatures
    from genrec.features import NpyFeatures, TextEmbeddings
    from genrec.tokenizer.lightning import RQKMeansTokenizer, RQVAETokenizer

    source = NpyFeatures(path=args.features) if args.features else TextEmbeddings()
    base = ItemFeatures(dataset=args.dataset, sources=[source])
    base.setup()
    features = base.features
    common = dict(levels=args.levels, codebook_size=args.codebook_size, collision=args.collision)
    runs = [
        ("rq-kmeans", RQKMeansTokenizer, dict(seed=args.seed), None, 1),
        ("rq-vae", RQVAETokenizer, {}, 1024, args.rqvae_epochs),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for method, cls, extra, batch_size, epochs in runs:
            if epochs == 0:
                continue
            pl.seed_everything(args.seed, verbose=False)
            module = cls(output_dir=str(Path(tmp) / method), **common, **extra)
            trainer = pl.Trainer(
                accelerator="auto",
                devices=1,
                max_epochs=epochs,
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
                default_root_dir=tmp,
            )
            data = ItemFeatures(features=features, batch_size=batch_size)
            trainer.fit(module, datamodule=data)
            metrics = json.loads((Path(tmp) / method / "metrics.json").read_text())
            levels = args.levels
            print(
                json.dumps(
                    {
                        "method": method,
                        "dataset": args.features or args.dataset,
                        "n_items": metrics["n_items"],
                        "dim": features.shape[1],
                        "epochs": epochs,
                        "fit_seconds": round(metrics["fit_seconds"], 2),
                        "reconstruction_error": round(metrics["reconstruction_error"], 4),
                        "usage": [round(u, 4) for u in metrics["usage"][:levels]],
                        "perplexity": [round(p, 1) for p in metrics["perplexity"][:levels]],
                        "collision_rate": round(metrics["collision_rate"], 4),
                        "max_group": metrics["max_group"],
                        "level_sizes": metrics["level_sizes"],
                        **provenance(),
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
