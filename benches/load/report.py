#!/usr/bin/env python3
"""The table of benches/load/run.sh, from its results.jsonl.

  report.py --results results.jsonl --meta meta.json [--memory memory.json]
  report.py --line JSON            one progress line for one measurement
  report.py --half-rate results    half of the gateway's full-policy RS256 same-token rate

Every number is a median over the runs. Ratios are computed inside each run (the
cells of one run were measured minutes apart at most) and then their median is taken,
as the issue asks: compare only ratios and CPU per request measured in one run.
"""
import argparse
import json
import statistics
import sys

CELL_ORDER = [
    "nginx-pass", "pingora-pass", "core-pass", "gw-pass", "gw-rs", "gw-es", "gwc-rs", "gwc-rsq",
    "gwf-pass", "gwf-rs", "gws-pass", "gws-rs", "haproxy-rs", "haproxy-es", "envoy-rs", "envoy-es",
]
DESCRIPTION = {
    "nginx-pass": "nginx passthrough",
    "pingora-pass": "pingora bare passthrough",
    "core-pass": "pingora-core loop, bare",
    "gw-pass": "portcullis auth=none",
    "gw-rs": "portcullis full RS256",
    "gw-es": "portcullis full ES256",
    "gwc-rs": "[cluster] full RS256",
    "gwc-rsq": "[cluster] RS256 +quota",
    "gwf-pass": "auth=none, audit file",
    "gwf-rs": "full RS256, audit file",
    "gws-pass": "auth=none, audit stdout",
    "gws-rs": "full RS256, audit stdout",
    "haproxy-rs": "haproxy jwt RS256",
    "haproxy-es": "haproxy jwt ES256",
    "envoy-rs": "envoy jwt+rbac RS256",
    "envoy-es": "envoy jwt+rbac ES256",
}


def load(path):
    out = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                out.append(json.loads(line))
    return out


def errors(r):
    w = r.get("wrk")
    if not w:
        return None
    return w["err_connect"] + w["err_read"] + w["err_write"] + w["err_status"] + w["err_timeout"]


def rps(r):
    w = r.get("wrk")
    if not w or w["duration_us"] <= 0:
        return None
    return w["requests"] * 1e6 / w["duration_us"]


def cpu_us_per_req(r, key="cpu_ticks"):
    w = r.get("wrk")
    if not w or w["requests"] <= 0:
        return None
    return r[key] / r["clk_tck"] * 1e6 / w["requests"]


def cpu_pct(r, keys=("cpu_ticks", "upstream_ticks", "aux_ticks")):
    """Server-side CPU: the target, the upstream and (quota cells) redis-server."""
    w = r.get("wrk")
    if not w or w["duration_us"] <= 0:
        return None
    return sum(r.get(k, 0) for k in keys) / r["clk_tck"] * 1e6 / w["duration_us"] * 100


def aux_us_per_req(r):
    """redis-server's CPU per request (the [cluster] gateway's cells)."""
    w = r.get("wrk")
    if "aux_ticks" not in r or not w or w["requests"] <= 0:
        return None
    return r["aux_ticks"] / r["clk_tck"] * 1e6 / w["requests"]


def quota_problems(r):
    """Why a Redis-quota cell did not measure what it claims (empty: it did)."""
    if r["cell"] != "gwc-rsq":
        return []
    q, w = r.get("quota"), r.get("wrk")
    if not w:
        return []
    if not q:
        return ["no quota counters read from the gateway"]
    why = []
    if q["allowed"] < 0.98 * w["requests"]:
        why.append(f"only {q['allowed']} quota decisions for {w['requests']} requests")
    if q["limited"]:
        why.append(f"{q['limited']} requests limited (the quota must not be reached)")
    if q["fallbacks"]:
        why.append(f"{q['fallbacks']} decisions counted locally (Redis not used)")
    if q["redis_errors"]:
        why.append(f"{q['redis_errors']} Redis errors")
    return why


# The audit pair: each audit cell and its audit-off twin on the plain gateway.
AUDIT_PAIRS = (
    ("passthrough", "gw-pass", "gwf-pass", "gws-pass"),
    ("full RS256", "gw-rs", "gwf-rs", "gws-rs"),
)
AUDIT_TARGET_US = 5.0


def audit_problems(r):
    """Why an audit cell's lines do not match its requests (empty: one line each).

    Exact: lines = requests the gateway counted (portcullis_requests_total). Against
    wrk: requests cut off when wrk stops (at most one per connection) are answered and
    logged but not counted by wrk, so lines - wrk requests lies in 0..connections.
    """
    a, w = r.get("audit"), r.get("wrk")
    if not r["cell"].startswith(("gwf-", "gws-")) or not w:
        return []
    if not a:
        return ["no audit line count"]
    why = []
    if a.get("gw_requests") is None:
        why.append("the gateway's request count could not be read")
    elif a["lines"] != a["gw_requests"]:
        why.append(f"{a['lines']} audit lines for {a['gw_requests']} requests counted by the gateway")
    extra = a["lines"] - w["requests"]
    if not 0 <= extra <= a.get("connections", 0):
        why.append(f"{a['lines']} audit lines for {w['requests']} requests sent by wrk")
    return why


def loadgen_pct(r):
    w = r.get("wrk")
    if not w or w["duration_us"] <= 0:
        return None
    return r["loadgen_cpu_ms"] * 1000 / w["duration_us"] * 100


def sig_per_req(r):
    w = r.get("wrk")
    if r.get("sig_checks") is None or not w or w["requests"] <= 0:
        return None
    return r["sig_checks"] / w["requests"]


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, spec, none="-"):
    return none if v is None else format(v, spec)


def ms(us):
    return None if us is None else us / 1000.0


def line(r):
    w = r.get("wrk")
    tag = f'{r["phase"]:<6} r{r["run"]} {r["cell"]:<12} {r["workload"]:<8}'
    if not w:
        return f"  {tag} NO RESULT (wrk exit {r['wrk_rc']})" + ("" if r["alive"] else "  TARGET DIED")
    s = (
        f"  {tag} {rps(r):>9.0f} req/s  p50 {w['p50_us'] / 1000:6.2f} ms  p99 {w['p99_us'] / 1000:6.2f} ms"
        f"  cpu {cpu_us_per_req(r):6.1f} us/req  errors {errors(r)}"
    )
    spr = sig_per_req(r)
    if spr is not None:
        s += f"  sig/req {spr:.2f}"
    a = r.get("audit")
    if a:
        s += f"  audit lines {a['lines']} (gateway requests {a.get('gw_requests')})"
    if r.get("rate"):
        s += f"  (paced at {r['rate']} req/s)"
    if not r["alive"]:
        s += "  TARGET DIED"
    return s


def by_run(results, phase):
    runs = {}
    for r in results:
        if r["phase"] == phase:
            runs.setdefault(r["run"], {})[(r["cell"], r["workload"])] = r
    return runs


def ratio_median(runs, num, den, metric=rps):
    values = []
    for cells in runs.values():
        a, b = cells.get(num), cells.get(den)
        if a and b and metric(a) and metric(b):
            values.append(metric(a) / metric(b))
    return med(values), len(values)


def diff_median(runs, a_key, b_key, metric=cpu_us_per_req):
    values = []
    for cells in runs.values():
        a, b = cells.get(a_key), cells.get(b_key)
        if a and b and metric(a) is not None and metric(b) is not None:
            values.append(metric(a) - metric(b))
    return med(values), len(values)


def half_rate(path):
    results = load(path)
    vals = [rps(r) for r in results if r["phase"] == "main" and r["cell"] == "gw-rs" and r["workload"] == "same"]
    m = med(vals)
    return int(m / 2) if m else 0


def report(results, meta, memory):
    runs = by_run(results, "main")
    nruns = len(runs)
    out = []
    p = out.append
    p("")
    p("=" * 118)
    p(
        f"Portcullis load benchmark - {meta.get('runs')} run(s) x {meta.get('duration')} s, "
        f"{meta.get('connections')} connections, wrk -t{meta.get('wrk_threads')} on CPU {meta.get('load_cpu')}, "
        f"servers on CPU {meta.get('server_cpu')}"
    )
    p(
        f"portcullis {meta.get('portcullis')}  nginx {meta.get('nginx')}  haproxy {meta.get('haproxy')}  "
        f"envoy {meta.get('envoy') or '-'}  |  distinct pool {meta.get('pool')}/alg, gateway token cache "
        f"{meta.get('gw_token_cache')}, envoy jwt cache {meta.get('envoy_jwt_cache')}, ACL {meta.get('ip_allow')}"
    )
    p(
        f"load average at the end: {meta.get('loadavg_end')}  (elapsed {meta.get('elapsed_s')} s)"
        + (f"  redis {meta['redis']}" if meta.get("redis") else "")
    )
    p("=" * 118)
    hdr = (
        f"{'target':<24} {'workload':<9} {'req/s':>9} {'(min-max)':>15} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'CPU us/req':>10} {'x nginx':>7} {'errors':>7} {'sig/req':>7} {'srvCPU%':>7} {'genCPU%':>7}"
    )
    p(hdr)
    p("-" * len(hdr))
    keys = sorted(
        {(r["cell"], r["workload"]) for r in results if r["phase"] == "main"},
        key=lambda k: (0 if k[1] == "same" else 1, CELL_ORDER.index(k[0]) if k[0] in CELL_ORDER else 99),
    )
    for key in keys:
        rs = [cells[key] for cells in runs.values() if key in cells]
        vals = [rps(r) for r in rs]
        good = [v for v in vals if v is not None]
        ratio, _ = ratio_median(runs, key, ("nginx-pass", "same"))
        errs = [errors(r) for r in rs]
        err_total = sum(e for e in errs if e is not None) if any(e is not None for e in errs) else None
        died = any(not r["alive"] for r in rs)
        p(
            f"{DESCRIPTION.get(key[0], key[0]):<24} {key[1]:<9} {fmt(med(vals), '9.0f')} "
            f"{(f'({min(good):.0f}-{max(good):.0f})' if good else '-'):>15} "
            f"{fmt(ms(med([r['wrk']['p50_us'] if r.get('wrk') else None for r in rs])), '7.2f')} "
            f"{fmt(ms(med([r['wrk']['p99_us'] if r.get('wrk') else None for r in rs])), '7.2f')} "
            f"{fmt(med([cpu_us_per_req(r) for r in rs]), '10.1f')} "
            f"{fmt(ratio, '7.2f')} {fmt(err_total, '7d')} {fmt(med([sig_per_req(r) for r in rs]), '7.2f')} "
            f"{fmt(med([cpu_pct(r) for r in rs]), '7.0f')} {fmt(med([loadgen_pct(r) for r in rs]), '7.0f')}"
            + ("  DIED" if died else "")
        )
    p("-" * len(hdr))
    p(
        "req/s, p50, p99, CPU: medians over runs. CPU us/req: utime+stime of the target's processes (workers "
        "included, upstream excluded) / requests."
    )
    p(
        "x nginx: req/s / nginx passthrough req/s of the same run. errors: non-2xx + socket errors (must be 0). "
        "sig/req: gateway signature checks per request"
    )
    p(
        "(~0 same token = cache hits, ~1 distinct = every request verified). srvCPU%: target + upstream CPU "
        "(+ redis-server for [cluster] cells; 100 = the server CPU is saturated); genCPU%: wrk's CPU "
        "(near 100 = load-generator bound)."
    )

    # --- key ratios ---
    p("")
    p("Key ratios (per-run ratio, median over runs; targets from issues 7, 16 and 17, reference lines have none):")
    checks = []

    def ratio_check(label, num, den, target, runs_=runs):
        v, n = ratio_median(runs_, num, den)
        checks.append((label, v, f">= {target:.2f}", None if v is None else v >= target, n, "x"))

    def cpu_of(cell):
        rs = [cells[cell] for cells in runs.values() if cell in cells]
        return med([cpu_us_per_req(r) for r in rs])

    # The floor set by the framework: pingora itself with no checks (reference, no target).
    def reference(label, v, n, unit):
        checks.append((label, v, "-", "reference", n, unit))

    reference("bare pingora / nginx passthrough", *ratio_median(runs, ("pingora-pass", "same"), ("nginx-pass", "same")), "x")
    reference(
        "gateway passthrough / bare pingora passthrough",
        *ratio_median(runs, ("gw-pass", "same"), ("pingora-pass", "same")), "x",
    )
    reference(
        "gateway passthrough CPU - bare pingora CPU",
        *diff_median(runs, ("gw-pass", "same"), ("pingora-pass", "same")), " us",
    )
    # Issue 17's decision: pingora-core's sessions and pool without pingora-proxy.
    reference(
        "bare pingora-core loop CPU / bare pingora CPU",
        *ratio_median(runs, ("core-pass", "same"), ("pingora-pass", "same"), metric=cpu_us_per_req), "x",
    )
    reference(
        "bare pingora-core loop CPU / nginx CPU",
        *ratio_median(runs, ("core-pass", "same"), ("nginx-pass", "same"), metric=cpu_us_per_req), "x",
    )
    # Issue 17's targets.
    v, n = ratio_median(runs, ("gw-pass", "same"), ("nginx-pass", "same"), metric=cpu_us_per_req)
    checks.append(("passthrough CPU per request / nginx's", v, "<= 2.00", None if v is None else v <= 2.0, n, "x"))
    ratio_check("full RS256 same-token / HAProxy RS256 (issue 17)", ("gw-rs", "same"), ("haproxy-rs", "same"), 1.5)
    ratio_check("full RS256 same-token / nginx passthrough (issue 17)", ("gw-rs", "same"), ("nginx-pass", "same"), 0.5)
    for a, A in (("rs", "RS256"), ("es", "ES256")):
        reference(
            f"distinct {A}: gateway CPU above its passthrough",
            *diff_median(runs, (f"gw-{a}", "distinct"), ("gw-pass", "same")), " us",
        )
        reference(
            f"distinct {A}: HAProxy CPU above nginx passthrough",
            *diff_median(runs, (f"haproxy-{a}", "distinct"), ("nginx-pass", "same")), " us",
        )
    for a, A in (("rs", "RS256"), ("es", "ES256")):
        ratio_check(f"full {A} same-token / gateway passthrough", (f"gw-{a}", "same"), ("gw-pass", "same"), 0.90)
        ratio_check(f"full {A} same-token / nginx passthrough", (f"gw-{a}", "same"), ("nginx-pass", "same"), 0.80)
        v = cpu_of((f"gw-{a}", "same"))
        checks.append((f"full {A} same-token CPU per request", v, "<= 25 us", None if v is None else v <= 25, nruns, " us"))
    # Issue 16: a Redis quota on the full policy, same gateway and route otherwise.
    ratio_check(
        "full RS256 + Redis quota / same route without quota", ("gwc-rsq", "same"), ("gwc-rs", "same"), 0.85
    )
    reference(
        "Redis quota: gateway CPU added per request",
        *diff_median(runs, ("gwc-rsq", "same"), ("gwc-rs", "same")), " us",
    )
    reference(
        "Redis quota: redis-server CPU per request",
        med([aux_us_per_req(cells[("gwc-rsq", "same")]) for cells in runs.values() if ("gwc-rsq", "same") in cells]),
        sum(1 for cells in runs.values() if ("gwc-rsq", "same") in cells), " us",
    )
    reference(
        "[cluster] gateway, no quota / plain gateway (full RS256)",
        *ratio_median(runs, ("gwc-rs", "same"), ("gw-rs", "same")), "x",
    )
    # Issue 17: the audit log's cost, gateway CPU per request over the same route with it off.
    for route, off, file_, stdout in AUDIT_PAIRS:
        v, n = diff_median(runs, (file_, "same"), (off, "same"))
        checks.append(
            (f"audit to a file: CPU added per request, {route}", v, f"<= {AUDIT_TARGET_US:.0f} us",
             None if v is None else v <= AUDIT_TARGET_US, n, " us")
        )
    for route, off, file_, stdout in AUDIT_PAIRS:
        reference(f"audit to stdout: CPU added per request, {route}", *diff_median(runs, (stdout, "same"), (off, "same")), " us")
    ratio_check("full RS256 same-token / HAProxy RS256", ("gw-rs", "same"), ("haproxy-rs", "same"), 2.0)
    ratio_check("full RS256 same-token / Envoy RS256", ("gw-rs", "same"), ("envoy-rs", "same"), 3.0)
    ratio_check("full RS256 distinct-token / HAProxy RS256 distinct", ("gw-rs", "distinct"), ("haproxy-rs", "distinct"), 1.0)
    ratio_check("full ES256 distinct-token / HAProxy ES256 distinct", ("gw-es", "distinct"), ("haproxy-es", "distinct"), 1.0)
    ratio_check("full RS256 distinct-token / Envoy RS256 distinct", ("gw-rs", "distinct"), ("envoy-rs", "distinct"), 1.0)
    ratio_check("full ES256 distinct-token / Envoy ES256 distinct", ("gw-es", "distinct"), ("envoy-es", "distinct"), 1.0)

    half = by_run(results, "half")
    half_lines = []
    if half:
        diffs = []
        for run, cells in sorted(half.items()):
            a, b = cells.get(("gw-rs", "same")), cells.get(("gw-pass", "same"))
            if a and b and a.get("wrk") and b.get("wrk"):
                diffs.append((a["wrk"]["p99_us"] - b["wrk"]["p99_us"]) / 1000)
                half_lines.append(
                    f"    run {run}: paced at {a['rate']} req/s: passthrough {rps(b):.0f} req/s p50 "
                    f"{b['wrk']['p50_us'] / 1000:.2f} p99 {b['wrk']['p99_us'] / 1000:.2f} ms | full RS256 "
                    f"{rps(a):.0f} req/s p50 {a['wrk']['p50_us'] / 1000:.2f} p99 {a['wrk']['p99_us'] / 1000:.2f} ms"
                    f" | errors {errors(b)}/{errors(a)}"
                )
        v = med(diffs)
        checks.append(("p99 full - p99 passthrough at half saturation", v, "<= 0.50 ms", None if v is None else v <= 0.5, len(diffs), " ms"))
    if memory:
        mib = memory["rss_kib"] / 1024 if memory.get("rss_kib") else None
        checks.append(
            (f"VmRSS, {memory.get('token_cache_entries')} tokens / {memory.get('client_cache_entries')} clients cached",
             mib, "<= 128 MiB", None if mib is None else mib <= 128, 1, " MiB")
        )
    for label, v, target, ok, n, unit in checks:
        if ok == "reference":
            verdict = "n/a" if v is None else "reference"
        else:
            verdict = "n/a" if ok is None else ("met" if ok else "NOT met")
        val = "-" if v is None else (f"{v:.2f}{unit}" if unit == "x" else f"{v:.1f}{unit}")
        p(f"  {label:<58} {val:>11}   target {target:<11} {verdict:<8} ({n} run(s))")
    quota_lines = []
    for run, cells in sorted(runs.items()):
        a, b = cells.get(("gwc-rsq", "same")), cells.get(("gwc-rs", "same"))
        if a and b and rps(a) and rps(b):
            q = a.get("quota") or {}
            quota_lines.append(
                f"    run {run}: without quota {rps(b):.0f} req/s (p99 {b['wrk']['p99_us'] / 1000:.2f} ms) | "
                f"with Redis quota {rps(a):.0f} req/s (p99 {a['wrk']['p99_us'] / 1000:.2f} ms) = {rps(a) / rps(b):.2f}x"
                f" | quota decisions/request {q.get('allowed', 0) / max(a['wrk']['requests'], 1):.2f},"
                f" redis-server {fmt(aux_us_per_req(a), '.1f')} us/req"
            )
    if quota_lines:
        p("  Redis quota pair ([cluster] gateway, same RS256 route with and without quota, same token):")
        out.extend(quota_lines)
    audit_lines_ = []
    for run, cells in sorted(runs.items()):
        for route, off, file_, stdout in AUDIT_PAIRS:
            o = cells.get((off, "same"))
            if not o or not rps(o):
                continue
            parts = [f"off {rps(o):.0f} req/s {cpu_us_per_req(o):.1f} us"]
            for label, key in (("file", file_), ("stdout", stdout)):
                c = cells.get((key, "same"))
                if not c or not rps(c):
                    continue
                a = c.get("audit") or {}
                parts.append(
                    f"{label} {rps(c):.0f} req/s {cpu_us_per_req(c):.1f} us ({cpu_us_per_req(c) - cpu_us_per_req(o):+.1f} us,"
                    f" {rps(c) / rps(o):.2f}x), lines {a.get('lines', '-')}/wrk {c['wrk']['requests']}/gateway {a.get('gw_requests', '-')}"
                )
            if len(parts) > 1:
                audit_lines_.append(f"    run {run} {route:<11}: " + " | ".join(parts))
    if audit_lines_:
        p("  audit log (gw's config with [log] audit = a file / \"stdout\" (a file: the gateway's log), same token; "
          "lines written / requests sent by wrk / requests counted by the gateway):")
        out.extend(audit_lines_)
    if half_lines:
        p("  half-saturation detail (paced with wrk delay(): closed loop with think time, not wrk2's open loop):")
        out.extend(half_lines)
    if memory:
        w = memory.get("wrk") or {}
        p(
            f"  memory phase ({memory.get('mode', 'both')} cached): {memory['tokens']} distinct tokens/clients, filled={memory['filled']} after "
            f"{memory['seconds']} s, VmRSS idle {fmt((memory.get('rss_idle_kib') or 0) / 1024, '.1f')} MiB, "
            f"under load {fmt(mib, '.1f')} MiB, peak (VmHWM) {fmt((memory.get('hwm_kib') or 0) / 1024, '.1f')} MiB, "
            f"signature checks {memory.get('signature_checks')}, wrk requests {w.get('requests', '-')}, "
            f"errors {errors(memory) if w else '-'}" + ("" if memory.get("alive", True) else "  GATEWAY DIED")
        )
    bad = []
    for r in results:
        if r["phase"] == "warmup":
            continue
        why = []
        if not r.get("wrk"):
            why.append("no wrk result")
        elif errors(r):
            why.append("errors under load")
        if not r["alive"]:
            why.append("target died")
        spr = sig_per_req(r)
        if r["workload"] == "distinct" and spr is not None and spr < 0.95:
            why.append(f"only {spr:.2f} signature checks per request: cache hits (raise POOL or lower GW_TOKEN_CACHE)")
        why.extend(quota_problems(r))
        why.extend(audit_problems(r))
        if why:
            bad.append((r, why))
    if bad:
        p("")
        p("PROBLEMS (such a cell is not a valid measurement):")
        for r, why in bad:
            p(line(r) + "  <- " + "; ".join(why))
    p("")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results")
    ap.add_argument("--meta")
    ap.add_argument("--memory")
    ap.add_argument("--line")
    ap.add_argument("--half-rate")
    a = ap.parse_args()
    if a.line:
        print(line(json.loads(a.line)))
        return
    if a.half_rate:
        print(half_rate(a.half_rate))
        return
    results = load(a.results)
    meta = json.load(open(a.meta)) if a.meta else {}
    memory = None
    if a.memory:
        with open(a.memory) as f:
            memory = json.load(f)
    print(report(results, meta, memory))


if __name__ == "__main__":
    sys.exit(main())
