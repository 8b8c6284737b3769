"""Fetch the real shortened English Wikipedia dump shipped inside the gensim 4.4.0 wheel.

``pip download --no-deps gensim==4.4.0`` into a cache directory (default
``~/.cache/bertforge``, or $BERTFORGE_CACHE), then the file
``gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2``
(1.7 MB, 106 articles) is read out of the wheel (a zip); gensim is never installed.
Prints the path of the extracted dump. Repeated runs reuse the cache.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from bertforge.cli.args import ArgumentParser
from bertforge.errors import UserError, cli_entry
from bertforge.files import atomic_path

__all__ = ["SAMPLE_MEMBER", "fetch_wiki_sample", "build_parser", "main"]

GENSIM = "gensim==4.4.0"
SAMPLE_MEMBER = ("gensim/test/test_data/"
                 "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2")
SAMPLE_SIZE = 1695871


def _default_cache() -> Path:
    return Path(os.environ.get("BERTFORGE_CACHE", Path.home() / ".cache" / "bertforge"))


def fetch_wiki_sample(cache_dir: str | os.PathLike | None = None) -> Path:
    """Path of the extracted sample dump (downloading the wheel once if needed)."""
    cache = Path(cache_dir) if cache_dir else _default_cache()
    out = cache / Path(SAMPLE_MEMBER).name
    if out.is_file() and out.stat().st_size == SAMPLE_SIZE:
        return out
    cache.mkdir(parents=True, exist_ok=True)
    wheels = sorted(cache.glob("gensim-4.4.0-*.whl"))
    if not wheels:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
               "--disable-pip-version-check", GENSIM, "-d", str(cache)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(cache.glob("gensim-4.4.0-*.whl"))
        if r.returncode != 0 or not wheels:
            last = (r.stderr.strip().splitlines() or ["no wheel"])[-1]
            raise UserError(f"pip download {GENSIM} failed: {last}")
    try:
        with zipfile.ZipFile(wheels[0]) as z:
            data = z.read(SAMPLE_MEMBER)
    except (zipfile.BadZipFile, KeyError, OSError) as e:
        raise UserError(f"cannot read {SAMPLE_MEMBER} from {wheels[0]}: {e}") from None
    if len(data) != SAMPLE_SIZE:
        raise UserError(f"{SAMPLE_MEMBER} in {wheels[0]} has {len(data)} bytes, "
                        f"expected {SAMPLE_SIZE}")
    with atomic_path(out) as tmp:
        tmp.write_bytes(data)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m bertforge.cli.prepare_wiki_sample",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--cache_dir", default=None, help="default ~/.cache/bertforge")
    return p.check(outputs={"cache_dir": "dir"})


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    print(fetch_wiki_sample(args.cache_dir))
    return 0


if __name__ == "__main__":
    main()
