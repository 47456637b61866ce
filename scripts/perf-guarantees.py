#!/usr/bin/env python3
"""Where hms-sync's CPU goes, by guarantee: reads `perf script` output of a flood-bench
profile (`cargo bench --bench flood -- drain --only hms-sync --perf DIR`) and counts each
sample of the hms-sync process in the first bucket whose pattern matches one of its frames
(innermost frame first, so a template rendered inside the filter's stage counts as templates).

usage: perf script -i DIR/drain.perf.data | scripts/perf-guarantees.py CPU_SECONDS EVENTS
prints each bucket's share and its cost in microseconds per event (share x CPU / events)."""
import re
import sys
from collections import Counter

# (bucket, frame pattern), tried in this order on every frame from the innermost out.
BUCKETS = [
    # Names of both the current tree and the one before issue 12 (actors::audit, Pipeline::*).
    ("audit record (seal, block, store)", r"hms_sync::(services|actors)::audit|hms_sync::audit::|hms_sync::bus::audit|Pipeline::audit|settle::audit"),
    ("console line", r"hms_sync::logging|tracing_subscriber|tracing_appender|crossbeam_channel|telemetry::.*console"),
    ("metrics and status numbers", r"hms_sync::metrics|metrics_exporter|metrics::|hms_sync::delivery::telemetry|hdrhistogram|ConnectorStats"),
    ("filter (CEL)", r"hms_sync::filter|cel_interpreter|cel::"),
    ("templates (URL, headers, body)", r"hms_sync::template|hms_sync::request::|upon::"),
    ("idempotency key, traceparent", r"hms_sync::delivery::(keys::)?(idempotency_key|derive_key|child_traceparent)|sha2::"),
    ("endpoint permit (rate, in-flight, breaker)", r"hms_sync::(services|actors)::(endpoint|breakers|budget)|hms_sync::limits|send::permit"),
    ("event parse and schema", r"serde_json::de|hms_sync::delivery::prepare|hms_sync::schema|jsonschema"),
    ("HTTP exchange (reqwest, hyper)", r"reqwest::|hyper::|hyper_util::|hms_sync::http_client"),
    ("NATS pull and ack (async-nats)", r"async_nats::|hms_sync::bus::"),
    ("pump, spawn, settle (orchestration)", r"hms_sync::actors|hms_sync::delivery|ractor::"),
]
COMPILED = [(name, re.compile(p)) for name, p in BUCKETS]


def main():
    cpu_s, events = float(sys.argv[1]), float(sys.argv[2])
    counts, total = Counter(), 0
    comm_ok, frames = False, []

    def flush():
        nonlocal total
        if comm_ok and frames:
            total += 1
            for f in frames:
                for name, pat in COMPILED:
                    if pat.search(f):
                        counts[name] += 1
                        return
            counts["runtime, kernel, allocator (not attributed)"] += 1

    for line in sys.stdin:
        if not line.strip():
            flush()
            comm_ok, frames = False, []
        elif line[0] not in " \t":
            comm_ok = not line.startswith(("nats-server", "perf"))
        else:
            parts = line.strip().split(None, 1)
            if len(parts) == 2:
                frames.append(parts[1])
    flush()
    us = cpu_s / events * 1e6
    print(f"{int(total)} samples, {us:.1f} us of hms-sync CPU per event")
    print(f"{'where':48s} {'share':>6s} {'us/event':>9s}")
    for name, _ in BUCKETS + [("runtime, kernel, allocator (not attributed)", None)]:
        n = counts.get(name, 0)
        print(f"{name:48s} {100*n/max(total,1):5.1f}% {us*n/max(total,1):9.1f}")


if __name__ == "__main__":
    main()
