"""Hostile rewrites of the critical sample prescriptions, at scale: how many come back weakened.

The property tests (tests/test_redteam.py) run the same rewrites a few hundred times in CI; this
runs as many as asked and prints the counts the hardening issue asked for:

    .venv/bin/python benchmarks/fuzz_critical.py 20000 [--rules rules]

Each rewrite mutates the drug names, some frequencies, the allergies and some diagnosis codes of a
critical sample (invisible characters, Cyrillic look-alikes, spaces, case, full width) and sends it
under one repeated id; "weakened" counts results that are not flagged or not critical.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from rx_audit import Auditor

ROOT = Path(__file__).resolve().parent.parent
FORMAT = ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad", "\u200e", "\u200f", "\u202a", "\u202c",
          "\u0000", "\u0007"]
CYRILLIC = {"a": "\u0430", "e": "\u0435", "o": "\u043e", "p": "\u0440", "c": "\u0441", "x": "\u0445", "y": "\u0443",
            "i": "\u0456", "A": "\u0410", "E": "\u0415", "O": "\u041e", "H": "\u041d"}


def mutate(rng: random.Random, text: str) -> str:
    kind = rng.choice(["format", "lookalike", "space", "case", "fullwidth", "mixed"])
    chars = list(text)
    if kind in ("format", "mixed"):
        for _ in range(rng.randint(1, 4)):
            chars.insert(rng.randint(0, len(chars)), rng.choice(FORMAT))
    if kind in ("lookalike", "mixed"):
        chars = [CYRILLIC.get(c, c) if rng.random() < 0.5 else c for c in chars]
    if kind == "space":
        chars = [rng.choice(["", " ", "\u3000", "\t"]), *chars, rng.choice(["", " ", "\u00a0"])]
    result = "".join(chars)
    if kind == "case":
        result = result.upper() if rng.random() < 0.5 else result.lower()
    if kind == "fullwidth":
        result = "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in result)
    return result


def rewrite(rng: random.Random, original: dict) -> dict:
    record = json.loads(json.dumps(original))
    for item in record["items"]:
        item["drug"] = mutate(rng, item["drug"])
        if item.get("frequency") and rng.random() < 0.5:
            item["frequency"] = mutate(rng, item["frequency"])
    record["patient"]["allergies"] = [mutate(rng, text) for text in record["patient"].get("allergies", [])]
    for diagnosis in record.get("diagnoses", []):
        if isinstance(diagnosis, dict) and diagnosis.get("code") and rng.random() < 0.5:
            diagnosis["code"] = mutate(rng, diagnosis["code"])
    record["id"] = "SAME-ID"
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("count", type=int)
    parser.add_argument("--rules", type=Path, default=ROOT / "rules")
    args = parser.parse_args()
    auditor = Auditor.from_path(args.rules)
    samples = [json.loads(line) for line in (ROOT / "examples" / "prescriptions.jsonl").read_text("utf-8").splitlines()
               if line.strip()]
    critical = [record for record in samples if str(auditor.audit(record).severity) == "critical"]
    rng = random.Random(7)
    weakened = crashed = 0
    started = time.perf_counter()
    for _ in range(args.count):
        try:
            result = auditor.audit(rewrite(rng, rng.choice(critical)))
            weakened += not result.flagged or str(result.severity) != "critical"
        except Exception:
            crashed += 1
    print(json.dumps({"inputs": args.count, "critical_samples": len(critical), "weakened": weakened,
                      "crashed": crashed, "seconds": round(time.perf_counter() - started, 1)}))


if __name__ == "__main__":
    main()
