"""``quantadv evaluate``: robust accuracy under AutoAttack's ensemble plus what the model calls for.

Example::

    quantadv evaluate --model mnist-cnn-nsq --n 200 --norm linf --eps 0.3 --png adv/

runs APGD-CE, APGD-T and Square as a cascade (Croce & Hein 2020), adds the attacks the model
calls for (BPDA and BPDA+EOT for a defended model, PGD++ HNS for a saturated softmax, transfer
from the float shadow for a model deployed with ``--deploy``), turns every break into an 8-bit
image inside the eps-ball (Q-lambda*, paper 000) and re-verifies it, and prints robust accuracy
for float inputs and for 8-bit images, each attack's contribution and the masking checks
(docs/evaluate.md). Progress (a bar counting images through the model, and a line per attack) goes
to stderr, the result to stdout (``--json PATH`` also writes it
as JSON). The exit code is 0, or 2 for a usage error.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import InputError
from ._common import (
    add_deploy,
    add_device_seed,
    add_model_threat,
    add_progress,
    add_threads,
    apply_threads,
    deploy_model,
    first_test_images,
    load_model,
    model_manifest,
    network_progress,
    resolve_device,
    show_progress,
)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "evaluate",
        help="robust accuracy: AutoAttack's ensemble + BPDA/EOT/PGD++/transfer as needed, on 8-bit images",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    add_model_threat(p, count="--n", count_default=500, eps_default=None)
    p.add_argument("--png", default=None, metavar="DIR", help="write the verified 8-bit adversarial images there")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the result as JSON")
    p.add_argument("--no-digital", action="store_true",
                   help="float inputs only: do not quantize the breaks into 8-bit images")
    p.add_argument("--standard", action="store_true",
                   help="the standard ensemble only (APGD-CE, APGD-T, Square), no model-specific attacks")
    p.add_argument("--steps", type=int, default=100, help="APGD iterations (default: 100)")
    p.add_argument("--queries", type=int, default=5000, help="Square queries (default: 5000)")
    p.add_argument("--eot", type=int, default=10, help="draws per gradient of BPDA+EOT (default: 10)")
    p.add_argument("--draws", type=int, default=10,
                   help="a randomised defense's outcomes are judged by the majority vote over this many fresh draws "
                        "(default: 10; 1 = one draw)")
    add_deploy(p)
    add_threads(p)
    add_progress(p)
    add_device_seed(p)
    return p


def run(args: argparse.Namespace) -> int:
    from ..eval import evaluate

    apply_threads(args)
    if args.n < 1:
        raise InputError(f"--n must be >= 1, got {args.n}")
    if args.norm == "linf" and not 0 <= args.eps <= 1:
        hint = f" (did you mean {args.eps / 255:.4g}, i.e. {args.eps:g}/255?)" if args.eps > 1 else ""
        raise InputError(f"--eps must lie in [0, 1] for linf, got {args.eps:g}{hint}")
    if args.no_digital and args.png:
        raise InputError("--png writes 8-bit adversarial images; drop --no-digital")
    device = resolve_device(args.device)
    model = load_model(args.model, device).eval()
    data_name = args.data or model_manifest(args.model).get("data") or "fashion-mnist"
    if args.deploy is not None:
        model = deploy_model(model, args.deploy, data_name, device)
    x, y = first_test_images(data_name, args.n, device)
    progress = show_progress(args)
    shown = args.model if args.deploy is None else f"{args.model} ({args.deploy})"
    with network_progress([model], desc="evaluate", enabled=progress) as bar:
        say = (lambda line: bar.write(line, file=sys.stderr)) if progress else None
        if say:
            say(f"evaluate {shown} on the first {x.shape[0]} {data_name} test images")
        result = evaluate(model, x, y, norm=args.norm, eps=args.eps, digital=not args.no_digital, steps=args.steps,
                          queries=args.queries, eot=args.eot, draws=args.draws, extra=not args.standard, png=args.png,
                          seed=args.seed, log=say)
    print(f"model {shown}, data {data_name}")
    print(result)
    if args.png:
        print(f"{len(result.png)} 8-bit adversarial images written to {args.png}")
    if args.json:
        result.to_json(args.json)
        print(f"result written to {args.json}")
    return 0
