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

Set SLUICE_HTTP to the facade's base URL (the Rust launcher does) and SLUICE_WEBHOOK_SECRET
to the broker's `[http] webhook_secret` (the check-back webhook refuses to run without it). The
last line printed is `RESULT {json}` for the test to check.
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
# A local transaction takes at most this long: a check-back for a transaction younger than this
# whose row is missing is answered "unknown" (the write may still commit), not "rollback".
LOCAL_TXN_TIMEOUT_S = 5.0
# Check-backs signed longer ago than this are refused (a replayed request).
MAX_SIGNATURE_AGE_S = 300
# Larger check-back bodies are refused before they are read.
MAX_CHECK_BYTES = 1 << 20
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

    def check_state(self, txn_id, born_at_ms):
        """The answer to a check-back, from this transaction's own row: the order row is
        written with the txn id in the local transaction, so its presence is the outcome.
        (Looking the order up by its id answered "commit" for a second transaction of the
        same order whose local write had failed.)"""
        with self.lock:
            row = self.db.execute("SELECT 1 FROM orders WHERE txn_id = ?", (txn_id,)).fetchone()
        if row is not None:
            return "commit"
        if time.time() - born_at_ms / 1000 < LOCAL_TXN_TIMEOUT_S:
            return "unknown"  # the local transaction may still be running
        return "rollback"

    def place(self, order_id, item, check_url, crash_before_commit=False, local_fails=False):
        """Half message, local transaction, then commit or rollback."""
        # Before the half message is born: the check-back answers "rollback" for a missing
        # row LOCAL_TXN_TIMEOUT_S after that birth, so the row must never be written later.
        started = time.time()
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
        try:
            with self.lock, self.db:  # one SQLite transaction: committed, or rolled back
                # Under the lock the check-back takes: past the time-out a check may already
                # have answered "rollback" for the missing row, so the write is abandoned.
                if time.time() - started >= LOCAL_TXN_TIMEOUT_S - 0.5:
                    raise sqlite3.OperationalError("local transaction timed out")
                self.db.execute("INSERT INTO orders VALUES (?, ?, ?)", (order_id, item, txn_id))
        except sqlite3.Error as e:
            log("orders", f"{order_id}: local write failed ({e}) -> rollback")
            call("POST", f"/v1/transactions/{txn_id}/rollback", {})
            raise
        if crash_before_commit:
            log("orders", f"{order_id}: order row committed, then the service 'crashes' before telling Sluice")
            return None
        _, r = call("POST", f"/v1/transactions/{txn_id}/commit", {})
        log("orders", f"{order_id}: committed ({r.get('result')})")
        return r


def signed_recently(headers, raw):
    """The broker's HMAC-SHA256 over "{timestamp}.{body}", compared in constant time, with a
    timestamp (epoch seconds) no older than MAX_SIGNATURE_AGE_S."""
    ts = headers.get("X-Sluice-Timestamp", "")
    try:
        age = abs(time.time() - int(ts))
    except ValueError:
        return False
    want = "sha256=" + hmac.new(SECRET.encode(), f"{ts}.".encode() + raw, hashlib.sha256).hexdigest()
    return age <= MAX_SIGNATURE_AGE_S and hmac.compare_digest(want, headers.get("X-Sluice-Signature", ""))


def webhook_server(orders):
    """The orders service's check-back endpoint: verifies the signature, answers from the DB."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            try:
                length = int(self.headers.get("Content-Length", "0"))
            except ValueError:
                length = -1
            if not 0 <= length <= MAX_CHECK_BYTES:
                self.send_response(400)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            raw = self.rfile.read(length)
            if not signed_recently(self.headers, raw):
                log("orders", "check-back with a bad or stale signature refused")
                self.send_response(401)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            check = json.loads(raw)
            # The answer needs only the transaction id; the order id is for the log.
            try:
                body = check.get("body")
                if body is None:
                    body = base64.b64decode(check.get("body_base64", "")).decode()
                order_id = json.loads(body).get("order", "?")
            except (ValueError, AttributeError):
                order_id = "?"
            state = orders.check_state(check["txn_id"], check["born_at_ms"])
            orders.checks.append((order_id, state))
            log("orders", f"check-back #{check.get('check_number')} for {order_id}: -> {state}")
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
    """Ships each order once: the shipment row (keyed by order id) is the effect and its own
    dedupe record, written in one SQLite transaction before the ack. A redelivery after a
    crash between that commit and the ack finds the row and is acked without shipping."""

    def __init__(self, path):
        self.db = sqlite3.connect(path)
        self.db.execute("CREATE TABLE shipments (order_id TEXT PRIMARY KEY, item TEXT, delivery INTEGER)")
        self.db.commit()
        self.duplicates = 0
        self.nacks = 0
        self.broken = {"glass-vase"}  # items the shipping partner refuses until the fix

    @property
    def shipped(self):
        """Order id -> the delivery that shipped it."""
        return dict(self.db.execute("SELECT order_id, delivery FROM shipments"))

    def ship(self, oid, item, delivery):
        """True when shipped now, False when it had been shipped before."""
        with self.db:
            cur = self.db.execute(
                "INSERT INTO shipments VALUES (?, ?, ?) ON CONFLICT (order_id) DO NOTHING",
                (oid, item, delivery))
        return cur.rowcount == 1

    def body_of(self, m):
        if m.get("body") is not None:
            return json.loads(m["body"])
        return json.loads(base64.b64decode(m["body_base64"]))

    def poll_once(self, wait_ms=1000):
        _, got = call("POST", f"/v1/groups/{GROUP}/topics/{TOPIC}/receive",
                      {"max": 16, "wait_ms": wait_ms, "visibility_ms": 15000})
        acks, nacks = [], []
        for m in got["messages"]:
            try:
                order = self.body_of(m)
                oid, item = order["order"], order["item"]
            except (ValueError, KeyError, TypeError) as e:
                # A body this service cannot read is poison: nacked until the broker parks it
                # in the DLQ, instead of failing the batch (and the service) on every receive.
                log("shipping", f"unreadable message {m.get('msg_id')} ({e}) -> nack")
                nacks.append(m["receipt"])
                continue
            if item in self.broken:
                log("shipping", f"{oid}: partner refuses {item!r} (delivery {m['delivery_count']}) -> nack")
                nacks.append(m["receipt"])
                continue
            if self.ship(oid, item, m["delivery_count"]):
                log("shipping", f"{oid}: shipped {item!r} (delivery {m['delivery_count']}) -> ack")
            else:
                self.duplicates += 1
                log("shipping", f"{oid}: already shipped, duplicate acked without shipping again")
            acks.append(m["receipt"])
        if acks:
            self.settle("ack", acks)
        if nacks:
            self.nacks += len(nacks)
            self.settle("nack", nacks)
        return len(got["messages"])

    def settle(self, verb, receipts):
        _, r = call("POST", f"/v1/groups/{GROUP}/{verb}", {"receipts": receipts})
        refused = [x for x in r["results"] if not x["ok"]]
        if refused:
            # An expired lease: the message comes back, and the shipment row keeps a second
            # delivery from shipping again.
            log("shipping", f"{verb} refused for {len(refused)} receipt(s): {refused}")


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
    if not SECRET:
        raise RuntimeError("SLUICE_WEBHOOK_SECRET is not set: check-backs could not be verified")
    folder = tempfile.mkdtemp()
    orders = Orders(os.path.join(folder, "orders.db"))
    hook = webhook_server(orders)
    check_url = f"http://127.0.0.1:{hook.server_address[1]}/sluice/check"
    log("orders", f"check-back webhook listening at {check_url}")

    orders.place("order-1", "keyboard", check_url)
    orders.place("order-2", "glass-vase", check_url)
    orders.place("order-3", "mouse", check_url, crash_before_commit=True)
    orders.place("order-4", "monitor", check_url, local_fails=True)

    shipping = Shipping(os.path.join(folder, "shipping.db"))
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
    forged = probe_check_back(check_url, b"not-the-secret", 0)
    stale = probe_check_back(check_url, SECRET.encode(), 3600)
    fresh = probe_check_back(check_url, SECRET.encode(), 0)
    log("demo", f"check-backs signed with another key / an hour ago / now: {forged} / {stale} / {fresh}")
    result = {
        "shipped": sorted(shipping.shipped),
        "order2_delivery_count": shipping.shipped.get("order-2"),
        "duplicates": shipping.duplicates,
        "forged_check_back": forged,
        "stale_check_back": stale,
        "fresh_check_back": fresh,
        "nacks": shipping.nacks,
        "checks": orders.checks,
        "dead_lettered": sorted({k for d in dlq for k in d["keys"]}),
    }
    log("demo", "done")
    print("RESULT " + json.dumps(result), flush=True)
    hook.shutdown()


def probe_check_back(check_url, key, age_s):
    """What the webhook answers a check-back signed with `key`, `age_s` seconds ago."""
    raw = json.dumps({"txn_id": "probe", "born_at_ms": 0, "body": "{}"}).encode()
    ts = str(int(time.time()) - age_s)
    sig = "sha256=" + hmac.new(key, f"{ts}.".encode() + raw, hashlib.sha256).hexdigest()
    req = urllib.request.Request(check_url, data=raw, method="POST", headers={
        "Content-Type": "application/json", "X-Sluice-Timestamp": ts, "X-Sluice-Signature": sig})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # the launcher reports the exit status
        print(f"FAILED: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
