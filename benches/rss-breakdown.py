#!/usr/bin/env python3
"""Where a process's resident memory goes: /proc/PID/smaps summed by mapping (the executable's
own pages, shared libraries, the heap, anonymous mappings such as thread stacks and malloc
arenas, the main stack), in KiB, largest first. RSS counts a shared library's resident pages in
full; PSS divides each page by the processes mapping it.

    benches/rss-breakdown.py PID
"""
import collections
import os
import sys

pid = sys.argv[1]
exe = os.path.realpath(f"/proc/{pid}/exe")
rss = collections.Counter()
pss = collections.Counter()
kind = None
with open(f"/proc/{pid}/smaps") as f:
    for line in f:
        parts = line.split()
        if "-" in parts[0] and len(parts) >= 5 and not parts[0].endswith(":"):
            path = parts[5] if len(parts) > 5 else ""
            perms = parts[1]
            if path == exe or path.startswith(exe):
                kind = "executable, " + ("code" if "x" in perms else "data")
            elif path == "[heap]":
                kind = "heap"
            elif path == "[stack]":
                kind = "main stack"
            elif path.startswith("["):
                kind = path
            elif path:
                kind = os.path.basename(path)
            else:
                kind = "anonymous (thread stacks, malloc arenas)"
        elif parts[0] == "Rss:":
            rss[kind] += int(parts[1])
        elif parts[0] == "Pss:":
            pss[kind] += int(parts[1])
total = sum(rss.values())
print("| mapping | RSS KiB | share | PSS KiB |")
print("| --- | --- | --- | --- |")
for k, v in rss.most_common():
    if v:
        print(f"| {k} | {v} | {100 * v / total:.0f} % | {pss[k]} |")
print(f"| total | {total} | | {sum(pss.values())} |")
