"""Command line of the lab: ``python -m solutions.lab run --out FILE [--quick] [--workers N] [--checkpoints DIR]``.

``run`` trains one tiny model per encoding, fine-tunes the two RoPE extensions, evaluates every method at
every length and writes the results as JSON (see `solutions.lab.experiment.run_experiment`). Progress goes
to stderr, one line per finished job (with a bar) and a few lines per training run.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

from .experiment import full_config, quick_config, run_experiment


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m solutions.lab", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="train, fine-tune and evaluate; write the results as JSON")
    run.add_argument("--out", required=True, type=pathlib.Path, help="the JSON file to write")
    run.add_argument("--quick", action="store_true", help="a tiny smoke-test configuration (about a minute)")
    run.add_argument("--workers", type=int, default=2,
                     help="worker processes, one thread each (default 2; the results do not depend on it)")
    run.add_argument("--checkpoints", type=pathlib.Path, default=None,
                     help="also save the trained models in this folder (load one with "
                          "solutions.lab.experiment.load_checkpoint)")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    config = quick_config() if args.quick else full_config()
    results = run_experiment(config, workers=args.workers, checkpoints=args.checkpoints)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    temporary = args.out.with_name(args.out.name + ".tmp")
    temporary.write_text(json.dumps(results, indent=1) + "\n")
    temporary.replace(args.out)
    print(f"wrote {args.out} ({results['wall_time_s'] / 60:.1f} min)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
