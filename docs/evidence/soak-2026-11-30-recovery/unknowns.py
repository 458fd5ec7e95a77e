#!/usr/bin/env python3
"""Unknown sends of a soak run, per 5 minutes, and how many fell while a
node was recovering its logs (broker started .. last 'recovered partition').
Usage: unknowns.py RUN_DIR   (reads history.jsonl.zst through zstd)"""
import json, re, subprocess, sys, datetime, glob, os
run = sys.argv[1]
m = re.search(r'(\d{8}T\d{6})', os.path.basename(run.rstrip('/')))
t0 = datetime.datetime.strptime(m.group(1), '%Y%m%dT%H%M%S').replace(tzinfo=datetime.timezone.utc).timestamp()
windows = []  # (start_s, end_s, node, ms)
for log in sorted(glob.glob(os.path.join(run, 'nodes', '*.log'))):
    node = os.path.basename(log)[:-4]
    start = None; last = None; first = True
    for line in open(log, errors='replace'):
        ts = line[:27]
        if 'broker started' in line:
            if start is not None and last is not None:
                windows.append((start, last, node))
            try:
                start = datetime.datetime.strptime(ts[:26], '%Y-%m-%dT%H:%M:%S.%f').replace(tzinfo=datetime.timezone.utc).timestamp() - t0
            except ValueError:
                start = None
            last = None
            if first: start = None; first = False
        elif 'recovered partition' in line and start is not None:
            last = datetime.datetime.strptime(ts[:26], '%Y-%m-%dT%H:%M:%S.%f').replace(tzinfo=datetime.timezone.utc).timestamp() - t0
    if start is not None and last is not None:
        windows.append((start, last, node))
bins = {}; inwin = {}; sends = {}
last = {}  # value -> (t of its first send, t of its last info) while unknown
p = subprocess.Popen(['zstd', '-dc', os.path.join(run, 'history.jsonl.zst')], stdout=subprocess.PIPE)
for raw in p.stdout:
    if b'"type":"info"' in raw:
        e = json.loads(raw); last[e['value']] = e['t'] / 1e6
    elif b'"type":"ok"' in raw and b'"offset"' in raw:
        e = json.loads(raw); last.pop(e['value'], None)
    elif b'"type":"invoke"' in raw and b'"attempt":1' in raw:
        e = json.loads(raw); b = int(e['t'] / 1e6 // 300)
        sends[b] = sends.get(b, 0) + 1
for s in last.values():
    b = int(s // 300)
    bins[b] = bins.get(b, 0) + 1
    if any(a - 1 <= s <= z + 15 for a, z, _ in windows):
        inwin[b] = inwin.get(b, 0) + 1
print('recoveries (node, started s, took s):')
for a, z, n in windows:
    print(f'  node {n} at {a:7.1f} s took {z - a:5.1f} s')
print('minutes   sends  ended unknown (binned by its last failed attempt)  of which during or <15 s after a recovery')
for b in sorted(set(bins) | set(sends)):
    print(f'{b*5:3d}-{b*5+5:<3d} {sends.get(b,0):8d} {bins.get(b,0):8d} {inwin.get(b,0):8d}')
print('total unknown', sum(bins.values()), 'of which near a recovery', sum(inwin.values()))
