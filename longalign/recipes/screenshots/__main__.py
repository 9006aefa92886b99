"""``python -m longalign.recipes.screenshots``: every dashboard page of a run as a PNG file
(:mod:`longalign.recipes.screenshots`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from longalign.recipes import screenshots


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m longalign.recipes.screenshots", description=screenshots.__doc__.split("\n\n")[0]
    )
    p.add_argument("--runs", default="runs", help="runs folder the dashboard serves")
    p.add_argument("--run", default="demo", help="run to show on every page")
    p.add_argument(
        "--compare",
        default=None,
        help="run compared with on the LongBench-Chat, Needle and Ladder pages (e.g. demo-base)",
    )
    p.add_argument("--out", default="docs/screenshots", help="folder for the PNG files")
    p.add_argument(
        "--pages",
        default="",
        help="comma list of the pages to shoot, by file name (" + ", ".join(n for _, n, _ in screenshots.PAGES) + "; "
        "default: all)",
    )
    p.add_argument("--suffix", default="", help="appended to each file name (ladder_SUFFIX.png): a second set of shots")
    args = p.parse_args(argv)
    if not (Path(args.runs) / args.run).is_dir():
        print(f"{Path(args.runs) / args.run}: no such run; run `longalign demo` first", file=sys.stderr)
        return 2
    try:
        pages = screenshots.select_pages(args.pages)
    except ValueError as exc:
        print(f"--pages: {exc}", file=sys.stderr)
        return 2
    with screenshots.serve(args.runs) as url:
        for path in screenshots.shoot(url, args.run, args.out, compare=args.compare, pages=pages, suffix=args.suffix):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
