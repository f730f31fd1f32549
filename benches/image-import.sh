#!/bin/sh
# Peak RSS of fleetctl and the hub importing a ~200 MiB image (docs/BENCHMARKS.md, "Image
# import memory"): a directory of 50 random 4 MiB files, then the same tree as a `docker save`
# archive, each imported by fleetctl into a hub started for the run, every process under
# `/usr/bin/time -v`.
#   benches/image-import.sh                      # binaries of target/debug
#   BIN=/path/to/target/release benches/image-import.sh
#   FORMAT_FLAG="--format docker" BIN=… benches/image-import.sh   # a fleetctl without detection
set -eu
BIN=${BIN:-$(pwd)/target/debug}
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
cd "$W"
mkdir -p img/app
for i in $(seq 1 50); do head -c 4194304 /dev/urandom > img/app/f$i; done
python3 - <<'PY'
import tarfile, io, json, hashlib, os
with tarfile.open("layer.tar", "w") as t:
    t.add("img/app", arcname="app")
h = hashlib.sha256()
with open("layer.tar", "rb") as f:
    for c in iter(lambda: f.read(1 << 20), b""):
        h.update(c)
cfg = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/app/f1"]},
                  "rootfs": {"type": "layers", "diff_ids": ["sha256:" + h.hexdigest()]}}).encode()
man = json.dumps([{"Config": "c.json", "Layers": ["l/layer.tar"]}]).encode()
with tarfile.open("docker.tar", "w") as t:
    for n, d in [("manifest.json", man), ("c.json", cfg)]:
        ti = tarfile.TarInfo(n); ti.size = len(d); t.addfile(ti, io.BytesIO(d))
    t.add("layer.tar", arcname="l/layer.tar")
os.remove("layer.tar")
PY
D=$W/hub
/usr/bin/time -v -o hub.time "$BIN/cloud-hub" serve --data-dir "$D" --http 127.0.0.1:0 \
    --mqtt 127.0.0.1:0 > hub.log 2>&1 &
TP=$!
for i in $(seq 1 100); do [ -f "$D/hub.json" ] && [ -f "$D/admin.token" ] && break; sleep 0.2; done
HTTP=$(python3 -c "import json;print(json.load(open('$D/hub.json'))['http'])")
TOK=$(cat "$D/admin.token")
/usr/bin/time -v -o dir.time "$BIN/fleetctl" --hub "$HTTP" --token "$TOK" images import img \
    --name dir > /dev/null 2>&1
# shellcheck disable=SC2086
/usr/bin/time -v -o docker.time "$BIN/fleetctl" --hub "$HTTP" --token "$TOK" images import \
    docker.tar --name docker ${FORMAT_FLAG:-} > /dev/null 2>&1
kill -TERM "$(pgrep -P $TP)"
wait $TP || true
for f in dir docker hub; do
    printf '%-7s peak RSS %s KiB, %s\n' "$f" \
        "$(sed -n 's/.*Maximum resident set size (kbytes): //p' $f.time)" \
        "$(sed -n 's/.*Elapsed (wall clock) time (h:mm:ss or m:ss): /wall /p' $f.time)"
done
