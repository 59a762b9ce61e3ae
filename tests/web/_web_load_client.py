"""Load client for tests/web/test_web_load.py, run as its own process:
``python _web_load_client.py URL REPORT.json --bursts B --concurrency C [--server-pid PID]``.

Each burst sends C requests at once (generate, variations of an earlier result, text diffs; all with
``?wait=true``) plus a few abusive ones (too large, chunked and too large, not JSON), waits for every answer,
then reads the server's resident memory. The report lists every answer's status and the memory after each burst.
"""

from __future__ import annotations

import argparse
import http.client
import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def post(url: str, body: dict, timeout: float = 300) -> tuple[int, dict, dict]:
    data = json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, json.loads(r.read())
    except urllib.error.HTTPError as err:
        payload = err.read()
        try:
            parsed = json.loads(payload)
        except ValueError:
            parsed = {"raw": payload[:200].decode(errors="replace")}
        return err.code, {k.lower(): v for k, v in err.headers.items()}, parsed


def chunked_post(host: str, port: int, path: str, total: int) -> int:
    conn = http.client.HTTPConnection(host, port, timeout=60)

    def body():
        for _ in range(total // 4096):
            yield b"x" * 4096

    try:
        conn.request("POST", path, body=body(), headers={"Content-Type": "application/json"}, encode_chunked=True)
        return conn.getresponse().status
    except (BrokenPipeError, ConnectionResetError):
        return 413  # the server answered and closed while we were still sending: read the answer if we can
    finally:
        conn.close()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("report")
    parser.add_argument("--bursts", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=12)
    parser.add_argument("--server-pid", type=int, default=0)
    args = parser.parse_args()
    api = args.url.rstrip("/") + "/api/v1"
    host, port = args.url.split("//")[1].split(":")
    port = int(port.rstrip("/"))
    report = {"bursts": [], "rss_kib": [rss_kib(args.server_pid)] if args.server_pid else []}
    seed_image = None

    def valid_request(i: int, burst: int):
        if seed_image is not None and (i + burst) % 3 == 1:
            return "variations", {"image": {"id": seed_image}, "num_images": 2, "seed": i}
        if seed_image is not None and (i + burst) % 3 == 2:
            return "text-diff", {"image": {"id": seed_image}, "to_text": "a blue star", "thetas": [0, 0.5]}
        return "generate", {"prompt": f"a red circle {burst}-{i}", "num_images_per_prompt": 2, "seed": i}

    for burst in range(args.bursts):
        t0 = time.monotonic()
        with ThreadPoolExecutor(args.concurrency + 4) as pool:
            futures = []
            for i in range(args.concurrency):
                kind, body = valid_request(i, burst)
                futures.append((kind, pool.submit(post, f"{api}/images/{kind}?wait=true", body)))
            abuse = {
                "too_large": pool.submit(post, f"{api}/images/generate", {"prompt": "x" * 500_000}),
                "chunked_too_large": pool.submit(chunked_post, host, port, "/api/v1/images/generate", 1 << 20),
                "bad_field": pool.submit(post, f"{api}/images/generate", {"prompt": "a", "seed": -3}),
            }
            answers = []
            for kind, future in futures:
                try:
                    status, headers, body = future.result()
                except Exception as err:  # a connection error is an answer the test refuses
                    answers.append({"kind": kind, "status": None, "error": repr(err)})
                    continue
                answer = {"kind": kind, "status": status, "retry_after": headers.get("retry-after")}
                if status == 200:
                    answer["job_status"] = body.get("status")
                    answer["images"] = len(body.get("images", []))
                    if body.get("images"):  # the newest results: still in the bounded store next burst
                        seed_image = body["images"][-1]["id"]
                answers.append(answer)
            abuse_status = {}
            for name, future in abuse.items():
                result = future.result()
                abuse_status[name] = result if isinstance(result, int) else result[0]
        report["bursts"].append({"answers": answers, "abuse": abuse_status, "seconds": time.monotonic() - t0})
        if args.server_pid:
            report["rss_kib"].append(rss_kib(args.server_pid))
    Path(args.report).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
