"""The table of benches/quickstart_fidelity.sh: per seed and side the quickstart's AP@0.1 and
mAP@0.1:0.5 (metrics.json), then mean and sample std per side, and each run's wall time, CPU time
and peak RSS (from its /usr/bin/time -v report).

    python3 benches/quickstart_fidelity_table.py QS_DIR   (QS_DIR/before/<seed>/metrics.json, ...)
"""
import json, os, re, statistics as st, sys
root = sys.argv[1] if len(sys.argv) > 1 else "/tmp/qsw/qs"
keys = [("AP_IoU_0.10_MaxDet_100", "AP@0.1"), ("mAP_IoU_0.10_0.50_0.05_MaxDet_100", "mAP@0.1:0.5")]
rows = {}
for side in ("before", "after"):
    for seed in range(6):
        p = f"{root}/{side}/{seed}/metrics.json"
        if not os.path.exists(p):
            continue
        m = json.load(open(p))
        t = open(f"{root}/{side}/{seed}.time").read()
        wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", t).group(1)
        user = float(re.search(r"User time \(seconds\): (\S+)", t).group(1))
        sysT = float(re.search(r"System time \(seconds\): (\S+)", t).group(1))
        rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", t).group(1))
        rows.setdefault(side, {})[seed] = dict(ap=m[keys[0][0]], map=m[keys[1][0]], wall=wall, cpu=user + sysT, rss=rss / 1024)
print("| seed | before AP@0.1 | before mAP@0.1:0.5 | after AP@0.1 | after mAP@0.1:0.5 |")
print("| --- | --- | --- | --- | --- |")
seeds = sorted(set(rows.get("before", {})) | set(rows.get("after", {})))
for s in seeds:
    b = rows.get("before", {}).get(s); a = rows.get("after", {}).get(s)
    f = lambda r, k: f"{r[k]:.4f}" if r else "—"
    print(f"| {s} | {f(b,'ap')} | {f(b,'map')} | {f(a,'ap')} | {f(a,'map')} |")
def ms(side, k):
    v = [r[k] for r in rows.get(side, {}).values()]
    if not v: return "—"
    sd = st.stdev(v) if len(v) > 1 else float("nan")
    return f"{st.mean(v):.4f} ± {sd:.4f} (min {min(v):.4f}, max {max(v):.4f}, n = {len(v)})"
for side in ("before", "after"):
    print(f"\n{side}: AP@0.1 {ms(side,'ap')}; mAP {ms(side,'map')}")
    for s, r in sorted(rows.get(side, {}).items()):
        print(f"  seed {s}: wall {r['wall']}, CPU {r['cpu']:.0f} s, peak RSS {r['rss']:.0f} MB")
