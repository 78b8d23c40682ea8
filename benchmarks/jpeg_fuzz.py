"""Fuzz the JPEG readers with hostile files (issue 19): count what escapes their contract.

Usage: ``python benchmarks/jpeg_fuzz.py --cases 10000``.

Case ``k`` is :func:`quantadv.io._jpeg_fuzz.case` of the seed files (grayscale, colour 4:4:4
and 4:2:0, odd sizes, restart markers, optimized Huffman tables with EXIF, progressive, CMYK)
mutated by bit flips, truncation, inserted or overwritten bytes, a rewritten frame header
(65535x65535, 0x0, odd or random sizes, component count, sampling factors, table numbers,
precision), dropped, duplicated or swapped marker segments, or two of these. Each case runs
in a forked child (``--chunk`` cases per child, which streams one verdict per case so that a
crash or a hang is pinned on its case: :func:`quantadv.io._jpeg_fuzz.run_stream_forked`)
through ``io.load_jpeg`` on a folder, ``io.jpeg.read_coefficients(...).to_bytes()`` then ``io.jpeg.decode``,
``io.jpeg.decode`` of the bytes, and the image-folder dataset reader. A case is *refused*
when every reader raises ``DataError`` naming the file, *ok* when what is accepted is
consistent (same pixels everywhere, coefficients written back decode bit for bit to the
file's pixels); anything else -- another exception, a message without the file's name,
inconsistent pixels, a crash (signal) or a hang -- is an *escape*. Exit status 1 if any.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time

from tqdm import tqdm

from quantadv.io import _jpeg_fuzz as fuzz


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10000, help="number of fuzz cases (default 10000)")
    parser.add_argument("--start", type=int, default=0, help="first case number (default 0)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds before a case counts as a hang")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    parser.add_argument("--chunk", type=int, default=100,
                        help="cases per forked child (default 100): the child streams one verdict per case, so a "
                             "crash or hang is still pinned on its case; 1 forks once per case")
    args = parser.parse_args(argv)
    seeds = fuzz.seeds()
    outcomes: collections.Counter[str] = collections.Counter()
    by_kind: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    escapes = []
    started = time.perf_counter()
    numbers = range(args.start, args.start + args.cases)
    bar = tqdm(total=args.cases, desc="jpeg fuzz", unit="case", disable=args.no_progress, file=sys.stderr)
    for first in range(0, args.cases, max(args.chunk, 1)):
        chunk = numbers[first: first + max(args.chunk, 1)]
        cases = [fuzz.case(seeds, number) for number in chunk]
        if args.chunk <= 1:
            verdicts = [fuzz.run_forked(raw, timeout=args.timeout) for _, raw in cases]
        else:
            verdicts = fuzz.run_stream_forked([raw for _, raw in cases], timeout=args.timeout)
        for number, (what, _), verdict in zip(chunk, cases, verdicts, strict=True):
            outcome = "escape" if verdict.startswith("escape") else verdict
            outcomes[outcome] += 1
            by_kind[fuzz.kind_of(number)][outcome] += 1
            if outcome == "escape":
                escapes.append((number, what, verdict))
                tqdm.write(f"case {number} ({what}): {verdict}", file=sys.stderr)
        bar.update(len(chunk))
    bar.close()
    seconds = time.perf_counter() - started
    print(f"{args.cases} cases (numbers {args.start}..{args.start + args.cases - 1}) over {len(seeds)} seed files "
          f"in {seconds:.0f} s: {outcomes['ok']} ok (accepted and consistent), {outcomes['refused']} refused with "
          f"DataError, {outcomes['escape']} escapes")
    print("| mutation | cases | ok | refused | escapes |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for kind, counts in sorted(by_kind.items()):
        print(f"| {kind} | {sum(counts.values())} | {counts['ok']} | {counts['refused']} | {counts['escape']} |")
    return 1 if escapes else 0


if __name__ == "__main__":
    raise SystemExit(main())
