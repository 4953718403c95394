"""Fits RQ-KMeans and the RQ-VAE on one dataset's item features and prints one JSON line per method.

Each line: method, fit seconds, reconstruction error (fraction of variance unexplained), codebook usage per level,
collision rate before handling, largest collision group, and the device. The artifacts go to a temporary folder.

With ``--memmap PATH`` it fits residual k-means alone on an (n, d) ``.npy`` read memory-mapped, in blocks of rows
(issue 14's scale target: 10^6 x 384 at 3 x 256 codes within 10 minutes on 2 cores), after writing a clustered
test matrix there with ``--blobs N`` when the file is missing, and prints one JSON line: iterations, inertia and
seconds per level, total seconds, peak resident memory, and the time of encoding every row as the export does.

Usage:
    PYTHONPATH=. python benchmarks/tokenizer_fit.py --dataset amazon-beauty
    PYTHONPATH=. python benchmarks/tokenizer_fit.py --features item_features.npy --rqvae-epochs 20
    PYTHONPATH=. python benchmarks/tokenizer_fit.py --memmap /tmp/blobs.npy --blobs 1000000 --dim 384 --threads 2
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from genrec.provenance import provenance


def write_blobs(path: str | Path, *, n: int, dim: int, centres: int = 3000, noise: float = 0.5, seed: int = 0,
                chunk_rows: int = 65536) -> None:
    """Writes an (n, dim) float32 ``.npy`` of L2-normalised points around ``centres`` Gaussian centres (unit normal
    coordinates, ``noise`` the per-coordinate standard deviation around them), ``chunk_rows`` rows at a time."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(centres, dim, generator=g)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, dim))
    for start in range(0, n, chunk_rows):
        rows = min(chunk_rows, n - start)
        x = means[torch.randint(centres, (rows,), generator=g)] + noise * torch.randn(rows, dim, generator=g)
        out[start : start + rows] = torch.nn.functional.normalize(x, dim=1).numpy()
    out.flush()


def memory_mib(field: str = "VmHWM") -> float:
    """A memory line of /proc/self/status in MiB (VmHWM: peak resident memory, which counts the pages of a memmap
    read so far; RssAnon: what the process allocated itself, now); NaN where there is no /proc."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def fit_memmap(path: str | Path, *, levels: int = 3, codebook_size: int = 256, seed: int = 0,
               chunk_size: int = 16384, max_points_per_centroid: int | None = 256, refine_iter: int = 3) -> dict:
    """Fits residual k-means on the ``.npy`` at ``path``, memory-mapped and read in blocks of ``chunk_size`` rows.

    Returns:
        ``codes`` (n, levels) int64, the fitted ``quantizer``, ``levels`` (one dict per level: iterations,
        sample_size, refine_iterations, inertia, seconds), ``seconds`` in all, ``peak_rss_mib`` (VmHWM) and, at the
        end, ``rss_anon_mib`` and ``rss_file_mib`` (the memmap's pages).
    """
    from genrec.tokenizer.rq_kmeans import ResidualKMeans

    x = np.load(path, mmap_mode="r")
    quantizer = ResidualKMeans(input_dim=x.shape[1], levels=levels, codebook_size=codebook_size, seed=seed,
                               max_points_per_centroid=max_points_per_centroid, refine_iter=refine_iter)
    start = time.perf_counter()
    fit = quantizer.fit_predict(x, chunk_size=chunk_size)
    return {"codes": fit.codes, "quantizer": quantizer, "levels": [level._asdict() for level in fit.levels],
            "seconds": time.perf_counter() - start, "peak_rss_mib": memory_mib("VmHWM"),
            "rss_anon_mib": memory_mib("RssAnon"), "rss_file_mib": memory_mib("RssFile")}


def scale_run(args: argparse.Namespace) -> None:
    """The ``--memmap`` mode (module docstring)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    if not Path(args.memmap).exists():
        if args.blobs is None:
            raise SystemExit(f"{args.memmap} does not exist; pass --blobs N to write a clustered test matrix there")
        start = time.perf_counter()
        write_blobs(args.memmap, n=args.blobs, dim=args.dim, centres=args.centres, seed=args.seed)
        logging.info("wrote %s rows x %d to %s in %.1f s", f"{args.blobs:,}", args.dim, args.memmap,
                     time.perf_counter() - start)
    result = fit_memmap(args.memmap, levels=args.levels, codebook_size=args.codebook_size, seed=args.seed,
                        max_points_per_centroid=args.max_points_per_centroid, refine_iter=args.refine_iter)
    x = np.load(args.memmap, mmap_mode="r")
    n, d = x.shape
    # The export's encoding of the whole catalogue, in blocks: it must give the fit's codes.
    start = time.perf_counter()
    same = bool(torch.equal(result["quantizer"].encode_catalogue(x), result["codes"]))
    encode_seconds = time.perf_counter() - start
    print(json.dumps({
        "method": "rq-kmeans (memmap)", "features": str(args.memmap), "n_items": n, "dim": d,
        "levels": [{k: round(v, 2) if isinstance(v, float) else v for k, v in level.items()}
                   for level in result["levels"]],
        "seconds": round(result["seconds"], 1), "peak_rss_mib": round(result["peak_rss_mib"]),
        "rss_anon_mib": round(result["rss_anon_mib"]), "rss_file_mib": round(result["rss_file_mib"]),
        "encode_seconds": round(encode_seconds, 1), "encode_matches_fit": same,
        "threads": torch.get_num_threads(), "max_points_per_centroid": args.max_points_per_centroid,
        "refine_iter": args.refine_iter, **provenance(),
    }), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="amazon-beauty", help="dataset for the text embeddings")
    parser.add_argument("--features", default=None, help="an (n_items, d) .npy file to use instead of text")
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--codebook-size", type=int, default=256)
    parser.add_argument("--rqvae-epochs", type=int, default=100, help="0 skips the RQ-VAE")
    parser.add_argument("--collision", default="extra_code", choices=["extra_code", "reassign"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--memmap", default=None, help="fit residual k-means alone on this (n, d) .npy, memory-mapped")
    parser.add_argument("--blobs", type=int, default=None, help="with --memmap: rows of the test matrix to write")
    parser.add_argument("--dim", type=int, default=384, help="with --blobs: its width")
    parser.add_argument("--centres", type=int, default=3000, help="with --blobs: its Gaussian centres")
    parser.add_argument("--threads", type=int, default=2, help="with --memmap: torch threads")
    parser.add_argument("--max-points-per-centroid", type=int, default=256)
    parser.add_argument("--refine-iter", type=int, default=3)
    args = parser.parse_args()
    if args.memmap is not None:
        scale_run(args)
        return

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
