#!/usr/bin/env python3
"""Writes placement/tests/data/members.json: placement vectors for member lists with gaps.

They are derived from the reference vectors (placement/tests/data/placement.json), not from the
Rust code: with members m (ascending, n of them), the owner of an id is m[k], where base 0 + k is
its owner under the contiguous rule with n replicas. Epochs are FNV-1a 64 of the canonical text
`mode|prefix|suffix|port|m1,m2,...`, computed here in Python.

Run from the repository root: python3 scripts/gen-member-vectors.py
placement/tests/vectors.rs fails if the checked-in file differs from what this writes.
"""
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "placement/tests/data/placement.json"
TARGET = ROOT / "placement/tests/data/members.json"

# Member lists with the gaps scale-down leaves (Compose numbering starts at 1, Kubernetes at 0).
MEMBER_LISTS = [[2], [2, 3], [1, 3], [0, 7], [1, 3, 4], [2, 3, 4], [0, 2, 5, 9, 1000], [5, 6, 7, 8, 9]]
NAMINGS = [("poc-routing-server", "", 8081), ("server", ".server-headless.poc-routing.svc.cluster.local", 8081)]


def fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def render() -> str:
    reference = json.loads(SOURCE.read_text(encoding="utf-8"))["placement"]
    contiguous = {}
    for case in reference:
        if case["base"] == 0:
            contiguous[(case["mode"], case["replicas"], case["client_id"])] = case["index"]
    cases = []
    for members in MEMBER_LISTS:
        n = len(members)
        for (mode, replicas, client_id), index in sorted(contiguous.items()):
            if replicas != n:
                continue
            cases.append({
                "mode": mode,
                "members": members,
                "client_id": client_id,
                "index": None if index is None else members[index],
            })
    epochs = []
    for mode in ["hash", "numeric", "jump"]:
        for prefix, suffix, port in NAMINGS:
            for members in MEMBER_LISTS:
                text = f"{mode}|{prefix}|{suffix}|{port}|{','.join(map(str, members))}"
                epochs.append({
                    "mode": mode, "prefix": prefix, "suffix": suffix, "port": port,
                    "members": members, "epoch": f"{fnv1a64(text.encode()):016x}",
                })
    return json.dumps({"members": cases, "epochs": epochs}, ensure_ascii=False, indent=1) + "\n"


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--check":
        sys.exit(0 if TARGET.read_text(encoding="utf-8") == render() else 1)
    TARGET.write_text(render(), encoding="utf-8")
    print(f"wrote {TARGET.relative_to(ROOT)}")
