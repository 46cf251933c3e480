"""``python -m moelens.paper --models all [--smoke] [--out docs/claims.md]``: writes the page of verdicts."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import ZOO, run_claims
from .claims import SMOKE, Sizes
from .page import claims_markdown


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m moelens.paper", description=__doc__)
    parser.add_argument("--models", default="all", help="'all' (the three zoo models) or comma-separated model names")
    parser.add_argument("--out", type=Path, default=Path("docs/claims.md"))
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, first model only (CI)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the raw numbers here")
    args = parser.parse_args(argv)
    models = list(ZOO) if args.models == "all" else [m.strip() for m in args.models.split(",") if m.strip()]
    if args.smoke:
        models = models[:1]
    sizes = SMOKE if args.smoke else Sizes()
    result = run_claims(models, sizes, args.seed)
    command = "python -m moelens.paper " + " ".join(argv if argv is not None else sys.argv[1:])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(claims_markdown(result, command.strip()), encoding="utf-8")
    if args.json is not None:
        args.json.write_text(json.dumps({"verdicts": result["verdicts"], "runs": result["runs"]}, indent=1, default=str),
                             encoding="utf-8")
    print(json.dumps(result["verdicts"]))
    return args.out


if __name__ == "__main__":
    main()
