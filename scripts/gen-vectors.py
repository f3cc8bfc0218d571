#!/usr/bin/env python3
"""Writes the placement reference vectors, independently of the Rust code:

- placement/tests/data/placement.json: FNV-1a 32/64 of every input, jump consistent hash for
  some keys and bucket counts, and the owner index of every id under each mode, replica count and
  index base (null where the id is refused);
- placement/tests/data/members.json: owners over member lists with the gaps a scale-down
  leaves, and the epoch of each list (FNV-1a 64 of `mode|prefix|suffix|port|m1,m2,...`).

The rules are written here from their definitions (docs/placement.md), so the Rust
crate, the Lua filter and this script agree only if all three are right. placement.json is the
project's copy of the shared reference vectors; this script writes it byte for byte.

Run from anywhere: python3 scripts/gen-vectors.py (or --check: exit 1 if a file is stale).
placement/tests/vectors.rs runs the check.
"""
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "placement/tests/data"

U32 = 0xFFFFFFFF
U64 = 0xFFFFFFFFFFFFFFFF

# Every FNV input; the client ids are the same list without the empty string.
INPUTS = [
    "",
    "a",
    "foobar",
    "123",
    "0",
    "7",
    "42",
    "18446744073709551615",
    "18446744073709551616",
    "client-1",
    "alice",
    "bob",
    "Zoë",
    "日本語",
    "a b",
    "a&b",
    "a=b",
    "x" * 256,
    "00042",
    "-5",
    "+5",
    "1e3",
    " 12",
    "487370041515",
    "683035873875",
    "940945836459",
    "357733601322",
    "247559253608",
    "689910314785",
    "112934409553",
    "379710022971",
    "598058695536",
    "140824741888",
    "719561327251",
    "626874396050",
    "446047494333",
    "761900373781",
    "224933129218",
    "916947015485",
    "627387211409",
    "260817588751",
    "849166462452",
    "119363542446",
    "280882981086",
    "401690295357",
    "39772478455",
    "323911283868",
    "193394348453",
    "371338457381",
    "146807446505",
    "232510064899",
    "686926892284",
    "869051432155",
    "910052650001",
    "510156421800",
    "848773746066",
    "443834132018",
    "827233296468",
    "631326884068",
    "497280625293",
    "100633088688",
    "480320283005",
    "578570751754",
    "5",
    "c8m89f0r_",
    "h41-uz-grsqlvq6_knwn97nysb2j2w19",
    "rgazc7uizj2ofgir_cdc3a9diql6",
    "7ke52qurdbw78",
    "b82wseqgwz4kguf46maa",
    "8b3k990ep4l3t9p9ity3",
    "m8wkptskn7s21ju-p0",
    "ocvv3vkzkdf1ca4k",
    "h3et301klhfj93ma-5ew_85kz3-902w4chmmt",
    "e-gicsa3uln8q1t0mscuzfwcgs865",
    "xhybld7nmr4keegf4786d8-xr7vv5k5",
    "v1i2bk0h6dc8_95bix8v1w4xq2tgf7g6577w",
    "ppcr5o551f3nabr3ftw7e",
    "mitm3971_va5vr2gjzsja3kj_4cs7n",
    "1x6fze977",
    "wga8yz77ccmoqqct3w5oq6do_1repk1nsc",
    "ryfk-rus68whcio_aajnd3aq_9aqp9k9",
    "xssm8kh5u9t5n2w4m_n",
    "4r0doycswp6dvf-posbtmbb",
    "ae7e281i3w7o1hux",
    "2m7v_tpz3-wu4_7qqui99k7w3nbdv6a2bssk",
    "n3c9h9-cu-rdqey889_g40ptb9cupsi60a",
    "abw-4",
    "39s1r8y6kma2sy3xd7",
    "jifncih95yad",
    "nb",
    "g9nfimagg5qhnmrl6-k0p50xpje9ekl94hv6",
    "1izf_mvpr-a8snv_r-6",
    "-3kx6j4l200xg2demu51fn-db",
    "ahkmi2-n0ceg9wn",
    "ej5uwxrplumglyff3431",
    "p3wlq8",
    "625v83tkvhps8-44otbxn4m",
    "npfdg3br3vbhh1_o",
    "lym_yi",
    "e",
    "e8do5mc",
    "zfl0m9",
    "c2rz__wogoy3j8qd-l3du8gl9ml3n",
    "wp6kz306n6c3lwbtzdt_yccr7xwf3",
    "umktmphwo-gziobm61wmn87x9n47c0cwrzzli",
    "1nav9j00",
    "plhcn_2nofrqus-elv1fnw-bto6y4p372cq6w2",
    "qh72lyv2_n15r_6-t89bnt6",
    "voqiyoi3cvjl1xls6v3_ln",
    "tm7fd_ynk79qphvly8-m5qw_ytt57s5",
    "jh8dv53viw3wj",
    "4fdbhspmj8nttsbde-3os-kzo",
    "e4lcfma4n0_nny34el6imb",
    "mygvv6su",
    "pxvecy3m7sv7i6u6uc0dnwtho_hmla",
    "e",
    "08j9il4_ly-kc-zz9e",
    "30ibpudxyu_ao6w2w9xuvhyh55x4eswi7yk",
    "i7-y00v_ptl2qp6e1ha-xwiavv5sqdikddd2l6",
    "obco15m6l5nkpbpagoj2kezz1sktfm2hbhuobv",
    "le0dbjt1g092vtf",
    "3y3bkc2zw74w8valem2i2fwy9r6",
    "txcpyitw",
]
JUMP_KEYS = [0, 1, 2, 0xDEADBEEF, U64, 123456789012345]
JUMP_BUCKETS = [1, 2, 3, 10, 1000, 65536]
MODES = ["hash", "numeric", "jump"]
REPLICAS = [1, 2, 3, 5, 10, 100]
BASES = [0, 1]
MAX_ID_BYTES = 256

# Member lists with the gaps scale-down leaves (Compose numbering starts at 1, Kubernetes at 0).
MEMBER_LISTS = [[2], [2, 3], [1, 3], [0, 7], [1, 3, 4], [2, 3, 4], [0, 2, 5, 9, 1000], [5, 6, 7, 8, 9]]
NAMINGS = [("poc-routing-server", "", 8081), ("server", ".server-headless.poc-routing.svc.cluster.local", 8081)]




def fnv1a32(data: bytes) -> int:
    h = 0x811C9DC5
    for b in data:
        h = ((h ^ b) * 0x01000193) & U32
    return h


def fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & U64
    return h


def jump(key: int, buckets: int) -> int:
    """Lamping and Veach, "A Fast, Minimal Memory, Consistent Hash Algorithm" (2014)."""
    b, j = -1, 0
    while j < buckets:
        b = j
        key = (key * 2862933555777941757 + 1) & U64
        j = int((b + 1) * (float(1 << 31) / float((key >> 33) + 1)))
    return b


def valid(client_id: str) -> bool:
    raw = client_id.encode("utf-8")
    return 1 <= len(raw) <= MAX_ID_BYTES and not any(b < 0x20 or b == 0x7F for b in raw)


def position(mode: str, client_id: str, n: int):
    """The position among n members the mode picks, or None if the id is refused."""
    if not valid(client_id):
        return None
    raw = client_id.encode("utf-8")
    if mode == "hash":
        return fnv1a32(raw) % n
    if mode == "numeric":
        if not client_id.isascii() or not client_id.isdigit() or int(client_id) > U64:
            return None
        return int(client_id) % n
    return jump(fnv1a64(raw), n)


def reference() -> dict:
    ids = [i for i in INPUTS if i != ""]
    return {
        "fnv": [
            {"input": s, "fnv1a32": fnv1a32(s.encode()), "fnv1a64": fnv1a64(s.encode())}
            for s in INPUTS
        ],
        "jump": [
            {"key": k, "buckets": n, "bucket": jump(k, n)} for k in JUMP_KEYS for n in JUMP_BUCKETS
        ],
        "placement": [
            {
                "mode": mode,
                "replicas": n,
                "base": base,
                "client_id": i,
                "index": None if position(mode, i, n) is None else base + position(mode, i, n),
            }
            for mode in MODES
            for n in REPLICAS
            for base in BASES
            for i in ids
        ],
    }


def members() -> dict:
    ids = [i for i in INPUTS if i != ""]
    cases = []
    for member_list in MEMBER_LISTS:
        n = len(member_list)
        if n not in REPLICAS:
            continue
        for mode in sorted(MODES):
            for i in sorted(set(ids)):
                k = position(mode, i, n)
                cases.append({
                    "mode": mode,
                    "members": member_list,
                    "client_id": i,
                    "index": None if k is None else member_list[k],
                })
    epochs = []
    for mode in MODES:
        for prefix, suffix, port in NAMINGS:
            for member_list in MEMBER_LISTS:
                text = f"{mode}|{prefix}|{suffix}|{port}|{','.join(map(str, member_list))}"
                epochs.append({
                    "mode": mode, "prefix": prefix, "suffix": suffix, "port": port,
                    "members": member_list, "epoch": f"{fnv1a64(text.encode()):016x}",
                })
    return {"members": cases, "epochs": epochs}


def render(value: dict) -> str:
    return json.dumps(value, ensure_ascii=False, indent=1) + "\n"


FILES = {"placement.json": reference, "members.json": members}

if __name__ == "__main__":
    check = sys.argv[1:] == ["--check"]
    stale = []
    for name, build in FILES.items():
        path = DATA / name
        text = render(build())
        if check:
            if path.read_text(encoding="utf-8") != text:
                stale.append(str(path.relative_to(ROOT)))
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        print("stale: " + ", ".join(stale) + " (run python3 scripts/gen-vectors.py)", file=sys.stderr)
        sys.exit(1)
