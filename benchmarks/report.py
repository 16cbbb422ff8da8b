"""Turn the raw per-repetition results of ``run.py`` into the markdown report (medians, ratios, targets)."""

from __future__ import annotations

import math
from typing import Any

from common import median

Results = dict[str, list[dict[str, Any]]]


def med(results: Results, key: str, fld: str) -> float:
    return median([r[fld] for r in results.get(key, []) if fld in r])


def _best(results: Results, prefix: str) -> tuple[str, float]:
    best, best_v = "", math.nan
    for key in results:
        if key.startswith(prefix + ":") and key != "drain:default":
            v = med(results, key, "jobs_per_s")
            if not math.isnan(v) and (math.isnan(best_v) or v > best_v):
                best, best_v = key, v
    return best, best_v


def _f(v: float, unit: str = "", digits: int = 0) -> str:
    return "n/a" if math.isnan(v) else f"{v:,.{digits}f}{unit}"


def _r(a: float, b: float) -> float:
    return a / b if b and not (math.isnan(a) or math.isnan(b)) else math.nan


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "MISS")


def _check(value: float, op: str, bound: float) -> bool | None:
    if math.isnan(value) or math.isnan(bound):
        return None
    return value >= bound if op == ">=" else value <= bound


def _latency_verdict(jobbuf: float, floor: float, peer: float) -> str:
    """Target 2: p50 within 1.25x the raw floor, and below pgqueuer's."""
    below_peer = _check(jobbuf, "<=", peer) if jobbuf != peer else False
    return f"{_verdict(_check(jobbuf, '<=', 1.25 * floor))}; {_verdict(below_peer)}"


def _settings(key: str) -> str:
    return key.split(":", 1)[1] if ":" in key else key


def render(results: Results, header: str, multi_cfg: dict[str, int] | None) -> tuple[str, dict[str, Any]]:
    """Return (markdown, summary)."""
    s: dict[str, Any] = {}
    rows: list[list[str]] = []
    peer_key, peer = _best(results, "peer")
    jb_key, jb = _best(results, "drain")
    jb_default = med(results, "drain:default", "jobs_per_s")
    settings = dict(x.split("=") for x in _settings(jb_key).split(",")) if "=" in jb_key else {}
    batch = int(settings.get("batch_size", settings.get("capacity", 0)))  # rows per claim
    raw_key = f"raw:batch={batch},conns=2"
    raw = med(results, raw_key, "jobs_per_s")
    raw50 = med(results, "raw:batch=50,conns=2", "jobs_per_s")
    s.update(drain_default=jb_default, drain_best=jb, drain_best_settings=_settings(jb_key), peer_best=peer,
             peer_best_settings=_settings(peer_key), raw_ceiling=raw, raw_settings=_settings(raw_key))  # fmt: skip
    rows.append(["drain, default config (jobs/s)", _f(jb_default), _f(peer), _f(raw50),
                 _f(_r(jb_default, peer), "x", 2), _f(_r(jb_default, raw50), "x", 2),
                 "(none; ceiling at B=50)", ""])  # fmt: skip
    ok_peer, ok_raw = _check(jb, ">=", 2.0 * peer), _check(jb, ">=", 0.5 * raw)
    rows.append([f"drain, best config (jobs/s) [{_settings(jb_key)}]", _f(jb), _f(peer), _f(raw),
                 _f(_r(jb, peer), "x", 2), _f(_r(jb, raw), "x", 2), "≥2.0x peer; ≥0.5x ceiling",
                 f"{_verdict(ok_peer)}; {_verdict(ok_raw)}"])  # fmt: skip
    own_sql = med(results, f"rawsql:batch={batch},conns=2", "jobs_per_s")
    s["jobbuf_sql_ceiling"] = own_sql
    rows.append([f"drain, jobbuf's own SQL on plain asyncpg, no library (jobs/s) [batch={batch},conns=2]", _f(jb),
                 "", _f(own_sql), "", _f(_r(jb, own_sql), "x", 2), "(diagnostic: the SQL alone)", ""])  # fmt: skip
    lat = {k: {p: med(results, f"latency:{k}", f"{p}_ms") for p in ("p50", "p90", "p99")}
           for k in ("jobbuf", "peer", "raw", "rawtrio", "rawstep")}  # fmt: skip
    s["latency_ms"] = lat
    for p in ("p50", "p90", "p99"):
        j, pe, ra = lat["jobbuf"][p], lat["peer"][p], lat["raw"][p]
        target, verdict = "", ""
        if p == "p50":
            target = "≤1.25x floor; < peer"
            verdict = _latency_verdict(j, ra, pe)
        rows.append([f"latency {p}, enqueue→take (ms)", _f(j, "", 2), _f(pe, "", 2), _f(ra, "", 2),
                     _f(_r(j, pe), "x", 2), _f(_r(j, ra), "x", 2), target, verdict])  # fmt: skip
    j, stack, stepped, floor = (lat[k]["p50"] for k in ("jobbuf", "rawtrio", "rawstep", "raw"))
    rows.append(["latency p50, the floor's own code on trio-asyncio, no library (ms)", _f(j, "", 2), "",
                 _f(stack, "", 2), "", _f(_r(j, stack), "x", 2),
                 f"(diagnostic: the stack alone, {_f(_r(stack, floor), 'x', 2)} the floor)", ""])  # fmt: skip
    rows.append(["latency p50, the floor's own code on trio, stepped as jobbuf steps asyncpg, no library (ms)",
                 _f(j, "", 2), "", _f(stepped, "", 2), "", _f(_r(j, stepped), "x", 2),
                 f"(diagnostic: the stack as jobbuf uses it, {_f(_r(stepped, floor), 'x', 2)} the floor)",
                 ""])  # fmt: skip
    alt = {
        k: med(results, f"latency_alternating:{k}", "p50_ms") for k in ("jobbuf", "peer", "raw", "rawtrio", "rawstep")
    }
    s["latency_alternating_p50_ms"] = alt
    j, pe, ra = alt["jobbuf"], alt["peer"], alt["raw"]
    rows.append(["latency p50, systems alternating sample by sample (ms)", _f(j, "", 2), _f(pe, "", 2),
                 _f(ra, "", 2), _f(_r(j, pe), "x", 2), _f(_r(j, ra), "x", 2),
                 f"(diagnostic: the stack alone {_f(_r(alt['rawtrio'], ra), 'x', 2)}, stepped "
                 f"{_f(_r(alt['rawstep'], ra), 'x', 2)} the floor)",
                 f"({_latency_verdict(j, ra, pe)})"])  # fmt: skip
    take_ns, chan_ns = med(results, "take", "take_ns"), med(results, "take", "channel_ns")
    s.update(take_ns=take_ns, channel_ns=chan_ns)
    rows.append(["take_job on a full buffer (ns/op)", _f(take_ns), "", f"{_f(chan_ns)} (channel)", "",
                 _f(_r(take_ns, chan_ns), "x", 2), "≤3x channel receive",
                 _verdict(_check(take_ns, "<=", 3 * chan_ns))])  # fmt: skip
    claim_keys = sorted((k for k in results if k.startswith("claim:")), key=lambda k: int(k.split(":")[1]))
    if len(claim_keys) == 2:
        small, big = (med(results, k, "claim_ms") for k in claim_keys)
        seq = any(r.get("seq_scan_on_jobs") for k in claim_keys for r in results[k])
        s.update(claim_ms_small=small, claim_ms_big=big, seq_scan=seq)
        rows.append([f"claim latency, B=100: {claim_keys[1][6:]} vs {claim_keys[0][6:]} rows (ms)",
                     f"{_f(big, '', 2)} vs {_f(small, '', 2)}", "", "", "", _f(_r(big, small), "x", 2),
                     "big ≤1.5x small; no Seq Scan", f"{_verdict(_check(big, '<=', 1.5 * small))}; "
                     f"{'Seq Scan!' if seq else 'index scans'}"])  # fmt: skip
    multi = {p: med(results, f"multi:{p}", "jobs_per_s") for p in (1, 2, 4)}
    s["multi_jobs_per_s"] = multi
    if not math.isnan(multi[1]):
        rows.append([f"drain with 1 / 2 / 4 processes (jobs/s) [{_settings(cfg_str(multi_cfg))}]",
                     " / ".join(_f(multi[p]) for p in (1, 2, 4)), "", "", "",
                     f"2p {_f(_r(multi[2], multi[1]), 'x', 2)}, 4p {_f(_r(multi[4], multi[1]), 'x', 2)} of 1p",
                     "2 procs ≥1.3x 1 proc", _verdict(_check(multi[2], ">=", 1.3 * multi[1]))])  # fmt: skip
        busy = {p: med(results, f"multi:{p}", "machine_busy") for p in (1, 2, 4)}
        s["multi_machine_busy"] = busy
        rows.append(["machine CPU busy during those drains (all cores, processes + PostgreSQL)",
                     " / ".join(_f(100 * busy[p], "%", 0) for p in (1, 2, 4)), "", "", "", "",
                     "(diagnostic: what 1 process leaves for more)", ""])  # fmt: skip
    raw = {c: med(results, f"rawconns:{c}", "jobs_per_s") for c in (2, 4)}
    s["raw_conns_jobs_per_s"] = raw
    if not math.isnan(raw[2]):
        batch = results["rawconns:2"][0].get("batch", "?")
        rows.append([f"raw SQL alone with 2 / 4 connections (jobs/s) [batch={batch}]", "", "",
                     f"{_f(raw[2])} / {_f(raw[4])}", "", f"4 conns {_f(_r(raw[4], raw[2]), 'x', 2)} of 2",
                     "(diagnostic: does the database itself scale?)", ""])  # fmt: skip
    rss, traced = med(results, "memory", "rss_per_10k_bytes"), med(results, "memory", "traced_per_10k_bytes")
    s.update(rss_per_10k=rss, traced_per_10k=traced)
    mem = f"{_f(rss / 1e6, '', 2)} / {_f(traced / 1e6, '', 2)}"
    rows.append(["memory per 10,000 buffered jobs (RSS / traced, MB)", mem, "", "", "", "", "(report only)", ""])
    head = ["benchmark", "jobbuf", "pgqueuer (peer)", "raw ceiling / floor", "jobbuf/peer", "jobbuf/ceiling",
            "target", "result"]  # fmt: skip
    md = [f"_{header}_", "", _table(head, rows), "", _sweeps(results), "", _plan(results, claim_keys)]
    return "\n".join(md), s


def cfg_str(cfg: dict[str, int] | None) -> str:
    return "multi:" + ",".join(f"{k}={v}" for k, v in (cfg or {}).items())


def _table(head: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def _sweeps(results: Results) -> str:
    out = ["**Sweeps** (median jobs/s over repetitions; every run listed in latest.json):", ""]
    rows = []
    for key in sorted(results, key=lambda k: (k.split(":")[0], -med(results, k, "jobs_per_s"))):
        if key.split(":")[0] in ("drain", "peer", "raw", "rawsql"):
            extra = ""
            if key.startswith("drain"):
                extra = (f"mean claim {med(results, key, 'mean_claim'):.0f} rows, "
                         f"mean ack batch {med(results, key, 'mean_ack_batch'):.0f}")  # fmt: skip
            n_ok = sum("jobs_per_s" in r for r in results[key])
            errs = [r["error"] for r in results[key] if "error" in r]
            rows.append([key, _f(med(results, key, "jobs_per_s")), f"{n_ok}", extra + ("; " + errs[0] if errs else "")])
    return out[0] + "\n\n" + _table(["system:settings", "jobs/s", "runs", "notes"], rows)


def _plan(results: Results, claim_keys: list[str]) -> str:
    if not claim_keys:
        return ""
    last = [r for r in results[claim_keys[-1]] if "plan_head" in r]
    if not last:
        return ""
    lines = "\n".join(last[-1]["plan_head"])
    return f"EXPLAIN of jobbuf's claim at {claim_keys[-1][6:]} rows (first lines):\n\n```\n{lines}\n```"
