"""Drives a deployed stack's HTTP API for tests/src/stack.rs (SigV4 by botocore).

stack.py post API ENDPOINT signed|unsigned     < one JSON request per line
stack.py load API ENDPOINT TABLE PER_SECOND    < one JSON request per line

A request is {"path": "example/counter/a", "type": "<content type>", "body": "..."},
optionally "key" (sent as Idempotency-Key: `load` then retries it until it is answered
202, as a client does, which applies it once), and, for `load`, "pk": the state item
that shows it applied. `post` prints
{"status", "body"} per request; `load` sends signed requests paced at PER_SECOND while
another thread polls TABLE for the items, and prints {"sent", "status", "seen"} per
request (seconds since the epoch; "seen" null if never within two minutes).
"""

import json
import sys
import threading
import time
import urllib.error
import urllib.request

import botocore.session
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest

SESSION = botocore.session.get_session()


def post(api, request, signed):
    url = f"{api}/{request['path']}"
    body = request["body"].encode()
    headers = {"Content-Type": request["type"]}
    if "key" in request:
        headers["Idempotency-Key"] = request["key"]
    if signed:
        signed_request = AWSRequest(method="POST", url=url, data=body, headers=headers)
        SigV4Auth(SESSION.get_credentials(), "execute-api", "us-east-1").add_auth(signed_request)
        headers = dict(signed_request.headers.items())
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body, headers=headers, method="POST")) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def load(api, endpoint, table, per_second, requests):
    dynamodb = SESSION.create_client("dynamodb", endpoint_url=endpoint, region_name="us-east-1")
    seen = {}
    waiting = set()
    lock = threading.Lock()
    done = threading.Event()

    def watch():
        deadline = None
        while True:
            with lock:
                keys = list(waiting)[:100]
            if not keys:
                if done.is_set():
                    return
                time.sleep(0.005)
                continue
            if done.is_set():
                deadline = deadline or time.time() + 120
                if time.time() > deadline:
                    return
            got = dynamodb.batch_get_item(
                RequestItems={table: {"Keys": [{"pk": {"S": k}} for k in keys], "ProjectionExpression": "pk"}}
            )
            now = time.time()
            with lock:
                for item in got["Responses"].get(table, []):
                    pk = item["pk"]["S"]
                    seen.setdefault(pk, now)
                    waiting.discard(pk)

    watcher = threading.Thread(target=watch)
    watcher.start()
    results = []
    start = time.time()
    for i, request in enumerate(requests):
        pause = start + i / per_second - time.time()
        if pause > 0:
            time.sleep(pause)
        sent = time.time()
        with lock:
            waiting.add(request["pk"])
        status, _ = post(api, request, True)
        # A keyed request is retried until accepted (a deploy may refuse it meanwhile).
        retries = 0
        while "key" in request and status != 202 and retries < 600:
            retries += 1
            time.sleep(0.2)
            status, _ = post(api, request, True)
        results.append((request["pk"], sent, status))
    done.set()
    watcher.join()
    for pk, sent, status in results:
        print(json.dumps({"sent": sent, "status": status, "seen": seen.get(pk)}))


def main():
    command, api, endpoint = sys.argv[1:4]
    requests = [json.loads(line) for line in sys.stdin if line.strip()]
    if command == "post":
        for request in requests:
            status, body = post(api, request, sys.argv[4] == "signed")
            print(json.dumps({"status": status, "body": body}))
    elif command == "load":
        load(api, endpoint, sys.argv[4], float(sys.argv[5]), requests)
    else:
        sys.exit(f"unknown command {command}")


if __name__ == "__main__":
    main()
