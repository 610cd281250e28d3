#!/usr/bin/env python3
"""Two microservices that use Sluice only through its HTTP facade, with nothing but the
Python standard library.

- The *orders* service keeps orders in SQLite and announces each one with a transactional
  message: the half message is sent first, the order row is written, then the transaction is
  committed (or rolled back when the local write fails). When the service "crashes" between its
  database commit and its call to Sluice, the broker asks the service's check-back webhook
  (HMAC-signed) and the service answers from its database.
- The *shipping* service consumes with leases: receive, ship, ack. A poison order is nacked
  until the broker parks it in the dead-letter queue; after a "fix" an operator replays it and
  it ships.

Set SLUICE_HTTP to the facade's base URL (the Rust launcher does) and optionally
SLUICE_WEBHOOK_SECRET. The last line printed is `RESULT {json}` for the test to check.
"""

import base64
import hashlib
import hmac
import http.server
import json
import os
import sqlite3
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

BASE = os.environ.get("SLUICE_HTTP", "http://127.0.0.1:8080").rstrip("/")
SECRET = os.environ.get("SLUICE_WEBHOOK_SECRET", "")
TOPIC = os.environ.get("DEMO_TOPIC", "PyOrders")
GROUP = os.environ.get("DEMO_GROUP", "py-shipping")
PRODUCER_GROUP = "py-orders"
STARTED = time.monotonic()
DEADLINE = STARTED + float(os.environ.get("DEMO_TIMEOUT_S", "90"))


def log(who, what):
    print(f"[{time.monotonic() - STARTED:6.2f}s] {who:<9} {what}", flush=True)


def call(method, path, body=None, expect=(200, 201, 202)):
    """One JSON request to the facade; returns (status, parsed body)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(BASE + path, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=40) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    parsed = json.loads(raw) if raw else None
    if status not in expect:
        raise RuntimeError(f"{method} {path} -> {status}: {parsed}")
    return status, parsed


# ---------------------------------------------------------------- orders service


class Orders:
    def __init__(self, path):
        self.db = sqlite3.connect(path, check_same_thread=False)
        self.lock = threading.Lock()
        self.db.execute("CREATE TABLE orders (id TEXT PRIMARY KEY, item TEXT, txn_id TEXT)")
        self.db.commit()
        self.checks = []

    def has(self, order_id):
        with self.lock:
            row = self.db.execute("SELECT 1 FROM orders WHERE id = ?", (order_id,)).fetchone()
        return row is not None

    def place(self, order_id, item, check_url, crash_before_commit=False, local_fails=False):
        """Half message, local transaction, then commit or rollback."""
        _, sent = call("POST", f"/v1/topics/{TOPIC}/transactions", {
            "body": json.dumps({"order": order_id, "item": item}),
            "keys": [order_id],
            "tag": "OrderCreated",
            "producer_group": PRODUCER_GROUP,
            "check_url": check_url,
        })
        txn_id = sent["txn_id"]
        log("orders", f"{order_id}: half message stored (txn {txn_id[:16]}...)")
        if local_fails:
            log("orders", f"{order_id}: local transaction failed -> rollback")
            _, r = call("POST", f"/v1/transactions/{txn_id}/rollback", {})
            return r
        with self.lock:
            self.db.execute("INSERT INTO orders VALUES (?, ?, ?)", (order_id, item, txn_id))
            self.db.commit()
        if crash_before_commit:
            log("orders", f"{order_id}: order row committed, then the service 'crashes' before telling Sluice")
            return None
        _, r = call("POST", f"/v1/transactions/{txn_id}/commit", {})
        log("orders", f"{order_id}: committed ({r.get('result')})")
        return r


def webhook_server(orders):
    """The orders service's check-back endpoint: verifies the signature, answers from the DB."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if SECRET:
                ts = self.headers.get("X-Sluice-Timestamp", "")
                want = "sha256=" + hmac.new(SECRET.encode(), f"{ts}.".encode() + raw, hashlib.sha256).hexdigest()
                if not hmac.compare_digest(want, self.headers.get("X-Sluice-Signature", "")):
                    log("orders", "check-back with a bad signature refused")
                    self.send_response(401)
                    self.end_headers()
                    return
            check = json.loads(raw)
            body = check.get("body")
            if body is None:
                body = base64.b64decode(check.get("body_base64", "")).decode()
            order_id = json.loads(body)["order"]
            state = "commit" if orders.has(order_id) else "rollback"
            orders.checks.append((order_id, state))
            log("orders", f"check-back #{check.get('check_number')} for {order_id}: the order row {'exists' if state == 'commit' else 'is missing'} -> {state}")
            out = json.dumps({"state": state}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


# ---------------------------------------------------------------- shipping service


class Shipping:
    def __init__(self):
        self.shipped = {}  # order id -> delivery count when shipped
        self.nacks = 0
        self.broken = {"glass-vase"}  # items the shipping partner refuses until the fix

    def body_of(self, m):
        if m.get("body") is not None:
            return json.loads(m["body"])
        return json.loads(base64.b64decode(m["body_base64"]))

    def poll_once(self, wait_ms=1000):
        _, got = call("POST", f"/v1/groups/{GROUP}/topics/{TOPIC}/receive",
                      {"max": 16, "wait_ms": wait_ms, "visibility_ms": 15000})
        acks, nacks = [], []
        for m in got["messages"]:
            order = self.body_of(m)
            oid, item = order["order"], order["item"]
            if item in self.broken:
                log("shipping", f"{oid}: partner refuses {item!r} (delivery {m['delivery_count']}) -> nack")
                nacks.append(m["receipt"])
                continue
            if oid in self.shipped:
                log("shipping", f"{oid}: already shipped, duplicate acked without shipping again")
            else:
                self.shipped[oid] = m["delivery_count"]
                log("shipping", f"{oid}: shipped {item!r} (delivery {m['delivery_count']}) -> ack")
            acks.append(m["receipt"])
        if acks:
            _, r = call("POST", f"/v1/groups/{GROUP}/ack", {"receipts": acks})
            assert all(x["ok"] for x in r["results"]), r
        if nacks:
            self.nacks += len(nacks)
            _, r = call("POST", f"/v1/groups/{GROUP}/nack", {"receipts": nacks})
            assert all(x["ok"] for x in r["results"]), r
        return len(got["messages"])


def wait_until(what, predicate, step):
    while time.monotonic() < DEADLINE:
        if predicate():
            return
        step()
    raise RuntimeError(f"timed out waiting for {what}")


def dead_letters():
    _, page = call("GET", f"/v1/groups/{GROUP}/dlq?limit=50")
    return page["messages"]


def main():
    orders = Orders(os.path.join(tempfile.mkdtemp(), "orders.db"))
    hook = webhook_server(orders)
    check_url = f"http://127.0.0.1:{hook.server_address[1]}/sluice/check"
    log("orders", f"check-back webhook listening at {check_url}")

    orders.place("order-1", "keyboard", check_url)
    orders.place("order-2", "glass-vase", check_url)
    orders.place("order-3", "mouse", check_url, crash_before_commit=True)
    orders.place("order-4", "monitor", check_url, local_fails=True)

    shipping = Shipping()
    wait_until("order-1..3 shipped or dead-lettered",
               lambda: {"order-1", "order-3"} <= set(shipping.shipped) and len(dead_letters()) >= 1,
               shipping.poll_once)
    dlq = dead_letters()
    for d in dlq:
        log("operator", f"DLQ of {GROUP}: {d['keys']} after {d['reconsume_times']} failed deliveries, reason: {d.get('failure_reason')}")

    shipping.broken.clear()
    log("operator", "the shipping partner fixed glass handling; replaying the DLQ (keys = order-2)")
    _, task = call("POST", f"/v1/groups/{GROUP}/dlq/replay", {"key": "order-2", "rate_per_sec": 50})
    replay_id = task["id"]

    def replay_done():
        _, st = call("GET", f"/v1/replays/{replay_id}")
        if st["state"] in ("cancelled", "failed"):
            raise RuntimeError(f"replay ended {st['state']}: {st}")
        return st["state"] == "completed"

    wait_until("the replay task", replay_done, lambda: time.sleep(0.2))
    wait_until("order-2 shipped", lambda: "order-2" in shipping.shipped, shipping.poll_once)

    # order-4 was rolled back: it must never reach shipping. Drain a little to be sure.
    shipping.poll_once(wait_ms=500)
    result = {
        "shipped": sorted(shipping.shipped),
        "order2_delivery_count": shipping.shipped.get("order-2"),
        "nacks": shipping.nacks,
        "checks": orders.checks,
        "dead_lettered": sorted({k for d in dlq for k in d["keys"]}),
    }
    log("demo", "done")
    print("RESULT " + json.dumps(result), flush=True)
    hook.shutdown()


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # the launcher reports the exit status
        print(f"FAILED: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
