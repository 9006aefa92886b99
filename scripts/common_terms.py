"""Write longalign/resources/common_terms.txt: the content terms of the relevance gate that occur in at least
20% of the built-in texts of this machine (standard-library sources, pydoc topics, package docs, licences).

Such a term ("python", "check", "return", "value") appears in almost any technical document, so a question
sharing it with its document says nothing about whether it is about that document; the gate leaves these
terms out of its overlap (see longalign/data/selfinstruct/relevance.py).

    python scripts/common_terms.py            # ~1 min on 2 cores
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MIN_SHARE = 0.2


def main() -> int:
    from longalign.data.corpus import builtin_documents
    from longalign.data.selfinstruct.relevance import COMMON_TERMS_FILE, document_terms

    docs = builtin_documents()
    df: Counter[str] = Counter()
    for d in docs:
        df.update(document_terms(d["text"]))
    common = sorted(t for t, c in df.items() if c / len(docs) >= MIN_SHARE)
    header = (
        f"# content terms found in at least {MIN_SHARE:.0%} of {len(docs)} built-in texts; "
        "written by scripts/common_terms.py\n"
    )
    COMMON_TERMS_FILE.write_text(header + "\n".join(common) + "\n", encoding="utf-8")
    print(f"{len(common)} terms -> {COMMON_TERMS_FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
