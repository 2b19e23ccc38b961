#!/usr/bin/env python3
"""Times `agentctl dlq replay --all` (called by scripts/bench.sh).

Usage: dlq_replay_bench.py AGENTCTL REDIS_URL WORK_DIR [N]

Imports N dead letters (20,000 by default) into namespace `dlqbench` with
`agentctl dlq import`, replays them all, checks that every one moved, and
prints {"dlq_replay_per_s": ...}.
"""
import json
import os
import subprocess
import sys
import time

ctl, url, work = sys.argv[1:4]
n = int(sys.argv[4]) if len(sys.argv) > 4 else 20000
path = os.path.join(work, "dlq.jsonl")
with open(path, "w") as f:
    for i in range(n):
        body = json.dumps({"v": 1, "id": f"t-{i}", "input": {"n": i}}).encode()
        f.write(json.dumps({
            "id": "0-0", "agent_type": "e2e", "task_id": f"t-{i}",
            "reason": "attempts_exhausted", "error": "boom", "attempts": 3,
            "worker": "w", "failed_at_ms": 1, "source_id": "1-0",
            "raw": [["body", list(body)], ["attempt", list(b"3")]],
        }) + "\n")
base = [ctl, "--redis-url", url, "--namespace", "dlqbench", "--json"]
subprocess.run(base + ["dlq", "import", path], check=True, stdout=subprocess.DEVNULL)
start = time.monotonic()
out = subprocess.run(base + ["dlq", "replay", "e2e", "--all"], check=True, capture_output=True)
secs = time.monotonic() - start
replayed = json.loads(out.stdout)["replayed"]
if replayed != n:
    sys.exit(f"replayed {replayed} of {n}")
print(json.dumps({"dlq_replay_per_s": round(n / secs)}))
