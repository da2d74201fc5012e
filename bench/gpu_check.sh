#!/usr/bin/env bash
# GPU check, for a machine with NVIDIA GPUs: the agent's probe finds them through NVML,
# calibration gives an SCU figure near the catalog's nominal one, and a job started with
# --gpus 1 sees exactly one GPU through CUDA_VISIBLE_DEVICES and can use it from torch,
# inside the job sandbox (bwrap) and, where the agent runs as root, as another user.
#
#   bash bench/gpu_check.sh            # from the repository root
#   SANDBOX=off JOB_USER= bash bench/gpu_check.sh   # the job as the agent runs it bare
#
# Needs python3 with this package's dependencies (a venv made by `make`, or the machine's
# own packages plus PYTHONPATH=src), bwrap unless SANDBOX=off, and, for the torch job,
# torch with CUDA. JOB_USER (default: nobody where this runs as root) is the user the
# agent runs the job as. Prints one line per check and exits non-zero if one fails.
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export CNET_HOME=$(mktemp -d)
PORT=${PORT:-18765}
SANDBOX=${SANDBOX:-on}
if [ "$(id -u)" = 0 ]; then JOB_USER=${JOB_USER-nobody}; else JOB_USER=${JOB_USER-}; fi
opts=(--option "sandbox=$SANDBOX")
[ -n "$JOB_USER" ] && opts+=(--option "user=$JOB_USER")
URL=http://127.0.0.1:$PORT
failed=0
check() { if [ "$1" = ok ]; then echo "ok    $2"; else echo "FAIL  $2"; failed=1; fi; }

echo "== nvidia-smi"
nvidia-smi -L || { echo "no NVIDIA driver here"; exit 2; }
smi_count=$(nvidia-smi -L | grep -c '^GPU ')

echo "== probe (NVML)"
"$PY" - <<'EOF' >"$CNET_HOME/probe.json"
import json
from computenet.agent.probe import probe_machine
m = probe_machine()
print(json.dumps([d.model_dump(mode="json") for d in m.devices if d.kind.value != "cpu"]))
EOF
cat "$CNET_HOME/probe.json"
probe_count=$("$PY" -c "import json,sys; print(len(json.load(open(sys.argv[1]))))" "$CNET_HOME/probe.json")
[ "$probe_count" = "$smi_count" ] && r=ok || r=no
check $r "NVML sees $probe_count GPU(s), nvidia-smi $smi_count"

echo "== calibration"
"$PY" -m computenet.cli.main agent calibrate --seconds 2 --json >"$CNET_HOME/cal.json" || true
calout=$("$PY" - "$CNET_HOME/cal.json" "$CNET_HOME/probe.json" <<'EOF'
import json, sys
from computenet import catalog
cal = json.load(open(sys.argv[1]))
gpus = json.load(open(sys.argv[2]))
fp32 = [m for m in cal["metrics"] if m["name"] == "matmul" and m.get("precision") == "fp32" and (m.get("device") or "").startswith("gpu")]
print(f"SCU {cal['scu']:.2f}; GPU fp32 matmul: " + ", ".join(f"{m['device']} {m['value']:.1f} TFLOPS" for m in fp32))
ok = bool(fp32)
for d in gpus:
    e = catalog.load().identify(d["vendor"], d["model"], d["memory_bytes"])
    nominal = e.device_tflops("fp32") if e else None
    print(f"{d['name']}: {d['model']} -> catalog {e.id if e else 'unknown'}, nominal fp32 {nominal}")
    got = next((m["value"] for m in fp32 if m["device"] == d["name"]), None)
    if nominal and got:
        ratio = got / nominal
        print(f"  measured/nominal fp32 = {ratio:.2f}")
        ok = ok and 0.3 <= ratio <= 1.2
print("CALIBRATION", "ok" if ok else "no")
EOF
)
echo "$calout"
grep -q "CALIBRATION ok" <<<"$calout" && r=ok || r=no
check $r "calibration measured the GPU(s)"

echo "== a job with --gpus 1 (sandbox=$SANDBOX, user=${JOB_USER:-unchanged})"
"$PY" -m computenet.cli.main node serve --port "$PORT" --log-level warning >"$CNET_HOME/node.log" 2>&1 &
node=$!
for _ in $(seq 1 100); do curl -sf "$URL/healthz" >/dev/null && break; sleep 0.2; done
kill -0 $node 2>/dev/null || { echo "the node did not start:"; tail -5 "$CNET_HOME/node.log"; exit 1; }
export CNET_URL=$URL CNET_TOKEN=$("$PY" -c "import json,sys; print(next(iter(json.load(open(sys.argv[1])).values())))" "$CNET_HOME/config/credentials.json")
"$PY" -m computenet.cli.main agent run --node "$URL" --token "$CNET_TOKEN" --pool gpu --heartbeat 1 "${opts[@]}" >"$CNET_HOME/agent.log" 2>&1 &
agent=$!
trap 'kill $agent $node 2>/dev/null; wait 2>/dev/null' EXIT
for _ in $(seq 1 300); do
  kill -0 $agent 2>/dev/null || { echo "the agent stopped:"; tail -5 "$CNET_HOME/agent.log"; exit 1; }
  "$PY" -m computenet.cli.main resources 2>/dev/null | grep -q online && break; sleep 0.5
done
out=$(timeout 180 "$PY" -m computenet.cli.main run --gpus 1 -- python3 -c '
import os, json, subprocess
env = {k: os.environ.get(k) for k in ("CUDA_VISIBLE_DEVICES", "CNET_VENDOR", "CNET_DEVICES")}
env["uid"] = os.getuid()
env["dev"] = sorted(os.listdir("/dev"))
try:
    env["nvidia_smi"] = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.strip()
except OSError as e:
    env["nvidia_smi"] = repr(e)
try:
    import torch
    env["torch_devices"] = torch.cuda.device_count()
    x = torch.ones(1024, 1024, device="cuda")
    env["torch_sum"] = float((x @ x).sum())
except Exception as e:
    env["torch_error"] = repr(e)
print(json.dumps(env))
')
echo "$out"
grep -i -E "sandbox|root" "$CNET_HOME/agent.log" | head -3
uid=$([ -n "$JOB_USER" ] && id -u "$JOB_USER" || id -u)
"$PY" - "$out" "$uid" "$SANDBOX" <<'EOF' && r=ok || r=no
import json, sys
env = json.loads(sys.argv[1])
devices = json.loads(env["CNET_DEVICES"])
assert env["CUDA_VISIBLE_DEVICES"] == str(devices[0]["local_index"]), env
assert env["CNET_VENDOR"] == "nvidia" and len(devices) == 1, env
assert env.get("torch_devices", 1) == 1 and "torch_error" not in env, env
assert env["uid"] == int(sys.argv[2]), env
if sys.argv[3] != "off":  # the sandbox's /dev: the accelerators', not the disks
    assert any(d.startswith("nvidia") for d in env["dev"]), env
    assert not any(d.startswith(("sd", "nvme", "vd")) for d in env["dev"]), env
EOF
check $r "the job sees exactly one GPU (CUDA_VISIBLE_DEVICES, CNET_DEVICES, torch), as uid $uid"
exit $failed
