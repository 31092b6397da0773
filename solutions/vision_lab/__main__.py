"""Command line of the vision lab: ``python -m solutions.vision_lab [--quick] [--out PATH] [--workers N] [--seeds S ...]``.

Trains one tiny ViT per position encoding and seed at the training grid, evaluates every method at every
grid, and writes the results as JSON (see `solutions.vision_lab.experiment.run_experiment`). Without
``--out`` a full run writes the committed file, ``book/multimodal/vision_results.json``, and a quick run
prints its JSON to stdout (it must never replace the committed results). Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

from .experiment import full_config, quick_config, run_experiment

COMMITTED = pathlib.Path(__file__).resolve().parents[2] / "book" / "multimodal" / "vision_results.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m solutions.vision_lab", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny smoke-test configuration (a few seconds)")
    parser.add_argument("--out", type=pathlib.Path, default=None,
                        help=f"the JSON file to write (default: {COMMITTED.relative_to(COMMITTED.parents[2])} "
                             "for a full run, stdout for --quick)")
    parser.add_argument("--workers", type=int, default=None,
                        help="worker processes, one thread each (default 2, or 1 for --quick, which then runs "
                             "in this process; the results do not depend on it)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="seeds of the initialisation and of the training batches (default: the preset's, "
                             "0 1 2 for the committed run); the test images stay those of the committed run")
    args = parser.parse_args(argv)
    workers = args.workers if args.workers is not None else (1 if args.quick else 2)
    if workers < 1:
        parser.error("--workers must be at least 1")
    config = quick_config() if args.quick else full_config()
    if args.seeds is not None:
        config.seeds = tuple(dict.fromkeys(args.seeds))
    results = run_experiment(config, workers=workers)
    text = json.dumps(results, indent=1) + "\n"
    out = args.out if args.out is not None or args.quick else COMMITTED
    if out is None:
        sys.stdout.write(text)
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(out.name + ".tmp")
    temporary.write_text(text)
    temporary.replace(out)  # never a half-written file
    print(f"wrote {out} ({results['wall_time_s'] / 60:.1f} min)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
