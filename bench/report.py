"""Render bench/results.json figures into bench/RESULTS.md (between markers,
leaving the hand-written sections -- torture, profiles, analysis -- alone)."""

from __future__ import annotations

from pathlib import Path

BEGIN = "<!-- BEGIN FIGURES (python -m bench writes this part) -->"
END = "<!-- END FIGURES -->"


def _f(x, digits=2):
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def figures_markdown(info: dict, r: dict) -> str:
    out = [BEGIN, "", f"Measured {info['date']} on {info['machine']}; Python {info['python']}; {info['versions']}.",
           "S3 is moto server on loopback, one process, restarted between rounds.", "",
           "| # | figure | spoolup | baseline (same run) | ratio | goal | met |", "|---|---|---|---|---|---|---|"]
    if "e2e" in r:
        e = r["e2e"]
        out.append(f"| 1 | end-to-end drain of {e['bytes'] // 2**20} MiB (256 B lines, 4 keys) | "
                   f"{e['spoolup_s']:.2f} s = {e['spoolup_MBps']:.0f} MB/s | boto3/s3transfer upload, same threads: "
                   f"{e['baseline_s']:.2f} s = {e['baseline_MBps']:.0f} MB/s | {e['ratio']:.2f} | >= 0.9 | "
                   f"{'yes' if e['ratio'] >= 0.9 else 'no'} |")
    if "ingest" in r:
        g = r["ingest"]
        ok = g["ratio"] >= 0.5 and g["spoolup_MBps"] >= 300
        out.append(f"| 2 | ingest only, {g['bytes'] // 2**20} MiB, fsync on | {g['spoolup_MBps']:.0f} MB/s, "
                   f"{g['spoolup_records_per_s'] / 1e6:.2f} M records/s (fsync off: {g['spoolup_nofsync_MBps']:.0f} MB/s) | "
                   f"`cat` to /dev/null: {g['cat_MBps']:.0f} MB/s"
                   + (f"; durable copy floor (`dd oflag=direct conv=fdatasync`): {g['dd_direct_MBps']:.0f} MB/s"
                      if "dd_direct_MBps" in g else "")
                   + f" | {g['ratio']:.2f} vs cat" + (f", {g['ratio_vs_dd']:.2f} vs dd" if "ratio_vs_dd" in g else "")
                   + f" | >= 0.5 x cat and >= 300 MB/s | {'yes' if ok else 'no (see below)'} |")
    if "manykeys" in r:
        m = r["manykeys"]
        out.append(f"| 3 | {m['keys']} keys, {m['bytes'] // 2**20} MiB envelope | {m['many_keys_s']:.1f} s, "
                   f"{m['many_keys_objects_per_s']:.0f} objects/s | same bytes in 4 keys: {m['few_keys_s']:.2f} s"
                   + (f"; boto3 PutObject of {m['keys']} small objects, 8 threads: {m['raw_put_s']:.1f} s"
                      if "raw_put_s" in m else "")
                   + f" | {m['ratio']:.2f} vs 4 keys" + (f", {m['ratio_vs_raw_put']:.2f} vs raw puts"
                                                         if "ratio_vs_raw_put" in m else "")
                   + f" | >= 0.5 | {'yes' if m['ratio'] >= 0.5 else 'no (see below)'} |")
    if "memory" in r:
        m = r["memory"]
        cells = ", ".join(f"{k}: {v['peak_rss_MiB']:.0f} MiB" for k, v in m["backlogs"].items())
        ok = m["max_peak_MiB"] <= 150 and m["growth_ratio"] <= 1.15
        out.append(f"| 4 | peak RSS, all spoolup processes, draining a backlog | {cells} | - | "
                   f"growth {m['growth_ratio']:.2f}x | <= 150 MiB, flat | {'yes' if ok else 'no'} |")
    if "recover" in r:
        c = r["recover"]
        out.append(f"| 5 | `recover` after kill -9, {c['open_objects']} open objects | {c['recover_s']:.2f} s | - | - | "
                   f"<= 2 s | {'yes' if c['recover_s'] <= 2 else 'no'} |")
    if "sustained" in r:
        s = r["sustained"]
        ok = s["ratio"] >= 0.95 and s.get("backlog_bounded", False)
        out.append(f"| 6 | syslog-ng + loggen at full rate for {s['seconds']} s while `spoolup run` uploads | "
                   f"{s['with_spoolup_rate']:.0f} msg/s, max backlog {s['max_backlog_MiB']:.1f} MiB, "
                   f"{s['final_backlog_MiB']:.1f} MiB at the end | loggen alone: {s['alone_rate']:.0f} msg/s | "
                   f"{s['ratio']:.2f} | >= 0.95, backlog bounded | {'yes' if ok else 'no'} |")
    if "history" in r:
        h = r["history"]
        ok = h["ratio"] <= 1.5 and h["rss_ratio"] <= 1.5
        out.append(f"| 7 | start-up (journal open, live sources and open objects loaded) with "
                   f"{h['history_sources']:,} reaped spool files in the journal | {h['history_s'] * 1000:.0f} ms, "
                   f"+{h['history_rss_growth_KiB'] / 1024:.1f} MiB RSS (first start prunes them once: "
                   f"{h['first_start_prune_s']:.1f} s; after: {h['after_prune_s'] * 1000:.0f} ms) | no history: "
                   f"{h['baseline_s'] * 1000:.0f} ms, +{h['baseline_rss_growth_KiB'] / 1024:.1f} MiB | "
                   f"{h['ratio']:.2f} (RSS {h['rss_ratio']:.2f}) | <= 1.5, flat | {'yes' if ok else 'no'} |")
    if "discovery" in r:
        d = r["discovery"]
        ok = d["files"] < 100_000 or d["spoolup_s"] <= 10
        out.append(f"| 8 | `spoolup run` starting on {d['files']} spool files: all journaled | {d['spoolup_s']:.2f} s "
                   f"(process start included) | `find -type f` of the same tree: {d['find_s']:.2f} s | "
                   f"{d['ratio']:.1f} x find | 100k files in <= 10 s | {'yes' if ok else 'no'} |")
    if "bandwidth" in r:  # issue 21 item 5
        b = r["bandwidth"]
        ok = 0.9 <= b["ratio"] <= 1.1
        out.append(f"| 9 | `drain` of {b['bytes'] // 2**20} MiB with max-bandwidth = {b['cap_Bps'] // 2**20} MiB/s | "
                   f"{b['achieved_Bps'] / 2**20:.2f} MiB/s on the wire | the cap | {b['ratio']:.3f} achieved/cap | "
                   f"0.9 .. 1.1 | {'yes' if ok else 'no'} |")
    if "slowdown" in r:
        w = r["slowdown"]
        cells = "; ".join(f"{k.replace('_', ' ')}: {w[k]['requests_per_s']:.1f} req/s, max {w[k]['max_in_flight']} "
                          f"in flight" for k in ("before", "storm", "storm_second_half", "after"))
        ok = w["storm_second_half"]["max_in_flight"] <= 1 < w["after"]["max_in_flight"]
        out.append(f"| 10 | SlowDown storm to every request ({w['threads']} upload threads) | {cells} | - | - | "
                   f"1 in flight late in the storm, more after | {'yes' if ok else 'no'} |")
    if "requests" in r:
        q = r["requests"]
        out.append(f"| 11 | S3 requests per small object, steady state (conditional writes known) | "
                   f"{q['many_keys']['per_object']:.3f} ({q['many_keys']['objects']} keys, one object each); "
                   f"{q['one_key']['per_object']:.3f} ({q['one_key']['objects']} objects of one key) | - | "
                   f"{q['ratio']:.3f} | <= 1.1 | {'yes' if q['ratio'] <= 1.1 else 'no'} |")
    if "claim" in r:
        c = r["claim"]
        out.append(f"| 12 | one claim after {c['history']:,} objects of a key | {c['first_claim']['requests']} request(s), "
                   f"{c['first_claim']['seconds'] * 1000:.0f} ms (the next claim: {c['next_claim']['requests']}) | - | - | "
                   f"<= 1 request, flat | {'yes' if c['first_claim']['requests'] <= 1 else 'no'} |")
    if "cpu" in r:
        c = r["cpu"]
        out.append(f"| 13 | CPU per byte shipped, {c['bytes'] // 2**20} MiB in 4 keys | spoolup (both processes) "
                   f"{c['spoolup_cpu_ns_per_byte']:.2f} ns/B | boto3/s3transfer process {c['boto3_cpu_ns_per_byte']:.2f} ns/B | "
                   f"{c['ratio']:.2f} | <= 1.2 | {'yes' if c['ratio'] <= 1.2 else 'no'} |")
    if "delay" in r:
        d = r["delay"]
        out.append(f"| 14 | {d['figure']} | big: {min(d['big']['spoolup_s']):.2f} s; small: "
                   f"{min(d['small']['spoolup_s']):.2f} s | boto3: {min(d['big']['boto3_s']):.2f} s; "
                   f"{min(d['small']['boto3_s']):.2f} s | {d['big']['ratio']:.2f}; {d['small']['ratio']:.2f} | "
                   f">= 0.9 both | {'yes' if d['ratio'] >= 0.9 else 'no'} |")
    if "verify" in r:
        v = r["verify"]
        req = v["verify_requests"]
        ok = req["total"] <= v["listing_pages"] + v["segments"]
        out.append(f"| 15 | `spoolup verify` over {v['objects']:,} objects ({v['segments']} ledger segments) | "
                   f"{v['verify_s']:.1f} s, {req['total']} requests ({req['list']} listing pages + {req['get']} "
                   f"segment GETs) | boto3 listing of the same prefix: {v['boto3_listing_s']:.1f} s, "
                   f"{v['listing_pages']} pages | {v['ratio']:.2f} | listing pages + a GET per segment, no request "
                   f"per object | {'yes' if ok else 'no'} |")
    if "scale" in r:  # issue 20's scale figures (bench/scale.py)
        k = r["scale"]
        lo, hi = k["small"], k["large"]
        ok = (k["ratio"] >= 0.9 and hi["rss_KiB_per_object"] <= lo["rss_KiB_per_object"] * 1.1
              and k["journal_bytes_per_object_ratio"] <= 1.1)  # (per object, as issue 20 asks; the RSS itself is shown)
        out.append(f"| 16 | {hi['keys']:,} keys, one small object each | {hi['objects_per_s']:.0f} objects/s, peak RSS "
                   f"{hi['peak_rss_MiB']:.0f} MiB, journal {hi['journal_bytes'] / 2**20:.1f} MiB "
                   f"({hi['journal_bytes_per_object']:.0f} B/object) | {lo['keys']:,} keys: {lo['objects_per_s']:.0f} "
                   f"objects/s, {lo['peak_rss_MiB']:.0f} MiB, {lo['journal_bytes_per_object']:.0f} B/object | "
                   f"{k['ratio']:.2f} objects/s, RSS {k['peak_rss_ratio']:.2f}, journal B/object "
                   f"{k['journal_bytes_per_object_ratio']:.2f} | flat (>= 0.9; RSS, journal per object not growing) | "
                   f"{'yes' if ok else 'no'} |")
    if "history24h" in r:
        h = r["history24h"]
        cells = "; ".join(f"{v}: {h[v]['rounds'][str(h['hours'])]['requests_per_object']:.2f} requests/object, claims "
                          f"{h[v]['claim_ms'][str(h['hours'])]:.1f} ms each" for v in ("hourly", "indexes") if v in h)
        base = "; ".join(f"{v}: {h[v]['rounds']['0']['requests_per_object']:.2f}, {h[v]['claim_ms']['0']:.1f} ms"
                         for v in ("hourly", "indexes") if v in h)
        out.append(f"| 17 | one more object for each of {h['keys']:,} keys after {h['hours']} h of history | {cells} | "
                   f"no history: {base} | {h['ratio']:.2f} | ~1 request/object, flat | "
                   f"{'yes' if h['ratio'] <= 1.1 else 'no'} |")
    if "sustained-zstd" in r:
        s = r["sustained-zstd"]
        cells = "; ".join(f"{c}: {v['with_spoolup_rate']:.0f} msg/s ({v['ratio']:.2f}), max backlog "
                          f"{v['max_backlog_MiB']:.0f} MiB{'' if v['backlog_bounded'] else ' (growing)'}"
                          for c, v in s["by_compression"].items())
        ok = s["ratio"] >= 0.95 and s["backlog_bounded"]
        out.append(f"| 6z | sustained syslog-ng + loggen {s['seconds']} s, compression = \"zstd\" | {cells} | loggen "
                   f"alone: {s['alone_rate']:.0f} msg/s | {s['ratio']:.2f} | >= 0.95, backlog bounded | "
                   f"{'yes' if ok else 'no'} |")
    out += ["", END]
    return "\n".join(out)


def write(path: Path, info: dict, results: dict) -> None:
    block = figures_markdown(info, results)
    text = path.read_text() if path.exists() else "# spoolup benchmark results\n\n" + BEGIN + "\n" + END + "\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        text = head + block + tail
    else:
        text = text.rstrip() + "\n\n## Figures\n\n" + block + "\n"
    path.write_text(text)
