#!/usr/bin/env python3
"""Per-image PSNR of aestream's denoiser beside BM3D and non-local means, on the same noisy files.

Why a script and not `aestream eval`: the peers are Python packages, and a fair comparison needs
the very same noisy 8-bit files for every method. This script makes them (grey as scikit-image's
`rgb2gray`, rounded to 8 bits; Gaussian noise from `numpy.random.default_rng(i)` for the i-th
image in sorted name order, rounded and clipped to 8 bits — the recipe of ../shared/data/PEERS.md),
runs `aestream run PIPELINE --once` folder → folder on them (so the seconds per frame are the
daemon's own), and scores every output against the clean grey image.

    python3 scripts/denoise-quality.py --data DIR [--data DIR …] --work /tmp/dq \
        [--aestream target/release/aestream] [--pipeline denoise] [--weights FILE] \
        [--sigmas 15,25,50] [--crop 256 | --fit 256] [--peers] [--label NAME] [-- RUN-ARGS…]

Peers (`--peers`, needs `pip install bm3d scikit-image`) are computed once and cached in
WORK/peers.json. Results go to WORK/results-LABEL.json and a table on stdout: per image and σ,
then mean, min and max per σ.
"""

import argparse
import json
import resource
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image


def grey_of(path):
    img = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64) / 255.0
    # scikit-image rgb2gray weights (ITU-R 709 luma), rounded to 8 bits.
    g = img @ np.array([0.2125, 0.7154, 0.0721])
    return np.clip(np.round(g * 255.0), 0, 255).astype(np.uint8)


def psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10.0 * np.log10(255.0**2 / max(mse, 1e-12))


def centre_crop(g, n):
    h, w = g.shape
    if n <= 0 or (h <= n and w <= n):
        return g
    y, x = max(0, (h - n) // 2), max(0, (w - n) // 2)
    return g[y : y + n, x : x + n]


def fit(g, n):
    """The whole photo scaled (Lanczos) so that its short side is n, then its centre n×n: the
    detail per pixel of a photo stored at 256², unlike a crop of a large photo (much smoother)."""
    if n <= 0:
        return g
    h, w = g.shape
    k = n / min(h, w)
    size = (max(n, round(w * k)), max(n, round(h * k)))
    im = Image.fromarray(g.astype(np.float32), mode="F").resize(size, Image.LANCZOS)
    g = np.clip(np.round(np.asarray(im)), 0, 255).astype(np.uint8)
    return centre_crop(g, n)


def prepare(files, work, sigmas, crop, fit_to=0):
    clean_dir = work / "clean"
    clean_dir.mkdir(parents=True, exist_ok=True)
    names = []
    for i, f in enumerate(files):
        name = f.stem + ".png"
        names.append(name)
        g = centre_crop(fit(grey_of(f), fit_to), crop)
        if not (clean_dir / name).exists():
            Image.fromarray(g).save(clean_dir / name)
        for s in sigmas:
            d = work / f"noisy-{s}"
            d.mkdir(exist_ok=True)
            if (d / name).exists():
                continue
            rng = np.random.default_rng(i)
            n = g.astype(np.float64) + rng.normal(0.0, s, g.shape)
            Image.fromarray(np.clip(np.round(n), 0, 255).astype(np.uint8)).save(d / name)
    return names


def load(path):
    return np.asarray(Image.open(path).convert("L"))


def peers(work, names, sigmas):
    cache = work / "peers.json"
    out = json.loads(cache.read_text()) if cache.exists() else {}
    import bm3d
    from skimage.restoration import denoise_nl_means

    for s in sigmas:
        for name in names:
            key = f"{s}/{name}"
            if key in out:
                continue
            clean = load(work / "clean" / name)
            x = load(work / f"noisy-{s}" / name).astype(np.float64) / 255.0
            sd = s / 255.0
            t = time.time()
            b = np.clip(bm3d.bm3d(x, sigma_psd=sd), 0, 1)
            tb = time.time() - t
            t = time.time()
            nl = np.clip(
                denoise_nl_means(
                    x, h=0.6 * sd, sigma=sd, fast_mode=True, patch_size=5, patch_distance=6
                ),
                0,
                1,
            )
            tn = time.time() - t
            q = lambda v: np.round(v * 255.0)
            out[key] = {
                "noisy": psnr(x * 255.0, clean),
                "bm3d": psnr(q(b), clean),
                "nlm": psnr(q(nl), clean),
                "bm3d_s": tb,
                "nlm_s": tn,
            }
            cache.write_text(json.dumps(out, indent=1))
            print(f"peers σ{s} {name}: bm3d {out[key]['bm3d']:.2f} nlm {out[key]['nlm']:.2f}",
                  file=sys.stderr)
    return out


def run_ours(args, work, names, sigmas):
    res = {}
    for s in sigmas:
        out = work / f"out-{args.label}-{s}"
        if out.exists():
            subprocess.run(["rm", "-rf", str(out)], check=True)
        cmd = [args.aestream, "run", args.pipeline, "--input", str(work / f"noisy-{s}"),
               "--output", str(out), "--once", "--log-format", "json"]
        if args.weights:
            cmd += ["--weights", args.weights]
        cmd += args.extra
        t = time.time()
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        secs = time.time() - t
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        # CPU seconds are what a loaded machine disturbs least; on an idle 2-core machine the
        # wall time is about half of them.
        cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        clean_px = 0
        for name in names:
            clean = load(work / "clean" / name)
            o = load(out / name)
            res[f"{s}/{name}"] = psnr(o, clean)
            clean_px += clean.size
        res[f"{s}/seconds"] = secs
        res[f"{s}/seconds_per_256sq"] = secs / (clean_px / 65536.0)
        res[f"{s}/cpu_seconds_per_256sq"] = cpu / (clean_px / 65536.0)
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", action="append", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--aestream", default="target/release/aestream")
    ap.add_argument("--pipeline", default="denoise")
    ap.add_argument("--weights")
    ap.add_argument("--sigmas", default="15,25,50")
    ap.add_argument("--peers", action="store_true")
    ap.add_argument("--label", default="ours")
    ap.add_argument("--crop", type=int, default=0, help="score the centre N×N of each image")
    ap.add_argument("--fit", type=int, default=0,
                    help="scale each photo to short side N, then take its centre N×N")
    ap.add_argument("--no-run", action="store_true", help="only prepare (and peers)")
    ap.add_argument("extra", nargs="*", help="more arguments for `aestream run` (after --)")
    args = ap.parse_args()
    work = Path(args.work)
    sigmas = [int(s) for s in args.sigmas.split(",")]
    files = sorted(
        (p for d in args.data for p in Path(d).iterdir()
         if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".tif", ".tiff")),
        key=lambda p: p.name,
    )
    names = prepare(files, work, sigmas, args.crop, args.fit)
    pe = peers(work, names, sigmas) if args.peers else {}
    ours = {} if args.no_run else run_ours(args, work, names, sigmas)
    (work / f"results-{args.label}.json").write_text(json.dumps(ours, indent=1))
    cols = ["ours"] if ours else []
    cols += ["bm3d", "nlm"] if pe else []
    for s in sigmas:
        print(f"\nσ {s}: " + " ".join(f"{c:>7}" for c in cols) + ("   ours-bm3d" if ours and pe else ""))
        rows = {c: [] for c in cols}
        for name in names:
            vals = []
            if ours:
                vals.append(ours[f"{s}/{name}"])
            if pe:
                vals += [pe[f"{s}/{name}"]["bm3d"], pe[f"{s}/{name}"]["nlm"]]
            for c, v in zip(cols, vals):
                rows[c].append(v)
            gap = f"   {vals[0] - vals[1]:+.2f}" if ours and pe else ""
            print(f"  {name[:40]:40} " + " ".join(f"{v:7.2f}" for v in vals) + gap)
        for stat, fn in (("mean", np.mean), ("min", np.min), ("max", np.max)):
            vals = [fn(rows[c]) for c in cols]
            print(f"  {stat:40} " + " ".join(f"{v:7.2f}" for v in vals))
        if ours:
            print(f"  per 256² of pixels, folder → folder: {ours[f'{s}/seconds_per_256sq']:.3f} s wall, "
                  f"{ours[f'{s}/cpu_seconds_per_256sq']:.3f} CPU s")


if __name__ == "__main__":
    main()
