"""Load: bounded bursts of concurrent requests from a second process against ``unclip serve`` in a third.

Every valid request must get a finished result (200) or a 429 with Retry-After; abusive ones their 413/422;
the server must stay up and its resident memory must stay bounded (the store holds at most 24 images here).
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

CLIENT = Path(__file__).parent / "_web_load_client.py"
BURSTS, CONCURRENCY, MAX_QUEUE, STORE = 5, 12, 2, 24


def test_bursts_get_results_or_429_and_memory_stays_bounded(start_server, tiny_model_dir, tmp_path):
    options = ["--max-queue", str(MAX_QUEUE), "--store-images", str(STORE), "--max-body-mb", "0.25"]
    server = start_server(tiny_model_dir, *options)
    report_path = tmp_path / "load.json"
    cmd = [sys.executable, str(CLIENT), server.url, str(report_path), "--bursts", str(BURSTS),
           "--concurrency", str(CONCURRENCY), "--server-pid", str(server.pid)]  # fmt: skip
    subprocess.run(cmd, check=True, timeout=600)
    report = json.loads(report_path.read_text())
    print(json.dumps({"rss_mib": [round(k / 1024) for k in report["rss_kib"]],
                      "seconds": [round(b["seconds"], 1) for b in report["bursts"]],
                      "ok": [sum(a["status"] == 200 for a in b["answers"]) for b in report["bursts"]],
                      "429": [sum(a["status"] == 429 for a in b["answers"]) for b in report["bursts"]]}))  # fmt: skip

    for burst in report["bursts"]:
        statuses = [a["status"] for a in burst["answers"]]
        assert len(statuses) == CONCURRENCY and set(statuses) <= {200, 429}, burst["answers"]
        for answer in burst["answers"]:
            if answer["status"] == 200:
                assert answer["job_status"] == "done" and answer["images"] == 2, answer
            else:
                assert int(answer["retry_after"]) >= 1
        # one computes, MAX_QUEUE wait: at least that many are served, the rest of a simultaneous burst refused
        assert statuses.count(200) >= 1 + MAX_QUEUE and statuses.count(429) >= 1
        assert burst["abuse"] == {"too_large": 413, "chunked_too_large": 413, "bad_field": 422}
    kinds = {a["kind"] for b in report["bursts"] for a in b["answers"] if a["status"] == 200}
    assert "generate" in kinds and len(kinds) >= 2  # which ones win a place is a race; image inputs did too

    assert server.alive()
    with urllib.request.urlopen(server.url + "/api/v1/health", timeout=10) as r:
        health = json.loads(r.read())
    assert health["queue"] == {"running": 0, "waiting": 0, "max_waiting": MAX_QUEUE}
    assert health["stored_images"] <= STORE
    rss = report["rss_kib"]
    assert max(rss) < 2 * 1024 * 1024, rss  # a generous bound: 2 GiB (the tiny model's server sits far below)
    assert rss[-1] - rss[1] < 150 * 1024, rss  # after the first burst has warmed up: no growth worth the name
