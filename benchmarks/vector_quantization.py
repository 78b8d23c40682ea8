"""Benchmark: RandDisc, pRD and swRD (paper 003) batched vs a per-image scikit-learn loop; EOT-PGD step cost.

1. Throughput (images/s) of ``quantadv.defenses.RandDisc``, ``PatchRandDisc`` and
   ``SlidingWindowRandDisc`` on batches of 256 Fashion-MNIST (or MNIST) 28x28 test images, at the
   paper's MNIST setting (s = 2, k = 2, sigma = tau = 4/255, beta = 1; 10 Lloyd iterations at
   most).
2. The same three quantizers written as the straightforward per-image loop a user would write
   with scikit-learn: for each image, numpy Gaussian noise, ``sklearn.cluster.KMeans(k,
   init="k-means++", n_init=1, max_iter=10, algorithm="lloyd")`` on the noisy points,
   ``predict`` on the points plus fresh noise, and (swRD) Eq. 2-4 in numpy. Speed-up = loop
   time / batched time (target >= 20x for swRD).
3. Cost of one PGD step against ``Defended(swRD, mnist-cnn)`` with BPDA (identity backward) and
   EOT over m = 10 draws, relative to one step against the undefended classifier, batch 100.

Both sides run on one thread (``torch.set_num_threads(1)``, scikit-learn/BLAS limited to one
thread by threadpoolctl) in the same process, interleaved, and the reported time is the median
over ``--repeat`` runs. ``--write`` appends nothing by itself: copy the printed Markdown into
benchmarks/RESULTS.md.

    python benchmarks/vector_quantization.py [--repeat 5] [--batch 256]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np
import torch

SIG = 4 / 255


def loop_quantize(x: np.ndarray, kind: str, s: int, k: int, sigma: float, tau: float, beta: float,
                  rng: np.random.Generator) -> np.ndarray:
    """One image ``(C, H, W)`` quantized by the per-image scikit-learn recipe (the baseline)."""
    from numpy.lib.stride_tricks import sliding_window_view
    from sklearn.cluster import KMeans

    c, h, w = x.shape
    if kind == "randdisc":
        pts = x.reshape(c, h * w).T
    elif kind == "prd":
        hp, wp = h + (-h % s), w + (-w % s)
        xp = np.zeros((c, hp, wp), x.dtype)
        xp[:, :h, :w] = x
        pts = xp.reshape(c, hp // s, s, wp // s, s).transpose(1, 3, 0, 2, 4).reshape(-1, c * s * s)
    else:
        win = sliding_window_view(x, (s, s), axis=(1, 2))  # (C, LH, LW, s, s)
        lh, lw = win.shape[1:3]
        pts = win.transpose(1, 2, 0, 3, 4).reshape(lh * lw, c * s * s)
    noisy = pts + sigma * rng.standard_normal(pts.shape)
    km = KMeans(k, init="k-means++", n_init=1, max_iter=10, algorithm="lloyd", random_state=int(rng.integers(2**31)))
    km.fit(noisy)
    lab = km.predict(pts + tau * rng.standard_normal(pts.shape))
    q = km.cluster_centers_[lab]
    if kind == "randdisc":
        return q.T.reshape(c, h, w)
    if kind == "prd":
        out = q.reshape(hp // s, wp // s, c, s, s).transpose(2, 0, 3, 1, 4).reshape(c, hp, wp)
        return out[:, :h, :w]
    dist = ((pts - q) ** 2).sum(1).reshape(lh, lw)
    score = -beta * dist
    num = np.zeros((c, h, w))
    den = np.zeros((h, w))
    top = np.full((h, w), -np.inf)
    for a in range(s):  # per-pixel maximum over covering windows, for a stable softmax
        for b in range(s):
            top[a:a + lh, b:b + lw] = np.maximum(top[a:a + lh, b:b + lw], score)
    qw = q.reshape(lh, lw, c, s, s)
    for a in range(s):
        for b in range(s):
            wgt = np.exp(score - top[a:a + lh, b:b + lw])
            num[:, a:a + lh, b:b + lw] += qw[:, :, :, a, b].transpose(2, 0, 1) * wgt
            den[a:a + lh, b:b + lw] += wgt
    return num / den


def median_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--loop-images", type=int, default=64,
                    help="images timed in the per-image loop (its time is per image, scaled)")
    ap.add_argument("--data", default="mnist-5k")
    ap.add_argument("--model", default="mnist-cnn")
    ap.add_argument("--quantizers", nargs="+", choices=("randdisc", "prd", "swrd"),
                    default=["randdisc", "prd", "swrd"], help="which quantizers to time")
    ap.add_argument("--no-pgd", dest="pgd", action="store_false", help="skip the EOT-PGD step cost (part 3)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from threadpoolctl import threadpool_limits

    import quantadv
    from quantadv import attacks, data, models
    from quantadv.defenses import Defended, PatchRandDisc, RandDisc, SlidingWindowRandDisc, adaptive

    images, labels = data.load(args.data, split="test")
    x = quantadv.to_float(images[: args.batch])
    y = labels[: args.batch]
    quantizers = {
        "randdisc": RandDisc(2, SIG, SIG),
        "prd": PatchRandDisc(2, 2, SIG, SIG),
        "swrd": SlidingWindowRandDisc(2, 2, SIG, SIG, beta=1.0),
    }
    timed = {name: q for name, q in quantizers.items() if name in args.quantizers}
    load = os.getloadavg()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "
          f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}; torch {torch.__version__}, 1 thread; "
          f"batch {args.batch} of {args.data} 28x28, median of {args.repeat}")
    rows = []
    xs = x.numpy().astype(np.float64)
    with threadpool_limits(1):
        for name, q in timed.items():
            q(x[:8])  # warm-up
            g = torch.Generator().manual_seed(0)
            t_batched = median_time(lambda q=q, g=g: q(x, generator=g), args.repeat)
            rng = np.random.default_rng(0)
            n = min(args.loop_images, args.batch)
            s, k = getattr(q, "s", 1), q.k
            beta = getattr(q, "beta", 1.0)
            loop_quantize(xs[0], name, s, k, SIG, SIG, beta, rng)  # warm-up (imports, thread pools)
            t_loop_n = median_time(
                lambda name=name, s=s, k=k, beta=beta, rng=rng, n=n: [
                    loop_quantize(xs[i], name, s, k, SIG, SIG, beta, rng) for i in range(n)
                ],
                max(1, args.repeat // 2),
            )
            t_loop = t_loop_n * args.batch / n
            # Sanity: the loop computes the same kind of thing (mean absolute difference to the input).
            diff_b = float((q(x, generator=g) - x).abs().mean())
            diff_l = float(np.mean([np.abs(loop_quantize(xs[i], name, s, k, SIG, SIG, beta, rng) - xs[i]).mean()
                                    for i in range(8)]))
            rows.append((name, args.batch / t_batched, args.batch / t_loop, t_loop / t_batched, diff_b, diff_l))

    print("\n| quantizer | batched (images/s) | per-image sklearn loop (images/s) | speed-up | "
          "mean abs change, batched / loop |")
    print("|---|---|---|---|---|")
    for name, ib, il, sp, db, dl in rows:
        print(f"| {name} | {ib:,.0f} | {il:,.1f} | **{sp:.0f}x** | {db:.4f} / {dl:.4f} |")

    if not args.pgd:
        return
    # EOT-PGD step cost.
    clf = models.load(args.model)
    nb = min(100, args.batch)
    xb, yb = x[:nb], y[:nb]
    defended = Defended(quantizers["swrd"], clf).eval()
    steps = 3

    def pgd_on(model, eot):
        attacks.pgd(model, xb, yb, eps=0.1, step=0.005, steps=steps, eot=eot)

    base = median_time(lambda: pgd_on(clf, 1), args.repeat) / steps
    bp, _ = adaptive(defended, "bpda")
    bpe, m = adaptive(defended, "bpda+eot", eot_samples=10)
    t_naive = median_time(lambda: pgd_on(defended, 1), args.repeat) / steps
    t_bpda = median_time(lambda: pgd_on(bp, 1), args.repeat) / steps
    t_eot = median_time(lambda: pgd_on(bpe, m), args.repeat) / steps
    print(f"\nPGD step, batch {nb}, {args.model}: undefended {1000 * base:.0f} ms; swRD naive (autograd through "
          f"the quantizer) {1000 * t_naive:.0f} ms ({t_naive / base:.1f}x); swRD BPDA {1000 * t_bpda:.0f} ms "
          f"({t_bpda / base:.1f}x); swRD BPDA+EOT m={m} {1000 * t_eot:.0f} ms ({t_eot / base:.1f}x; "
          f"{t_eot / t_bpda:.1f}x one BPDA step)")


if __name__ == "__main__":
    main()
