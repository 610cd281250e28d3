#!/usr/bin/env python3
"""Drives the independent C++ RocketMQ client (librocketmq.so through rocketmq-client-python)
against a running Sluice, for the compatibility tests in server/tests/it/compat_cpp.rs.

Every command prints exactly one JSON object on stdout as its last line; the Rust test parses it.
Every loop is bounded by a count and a timeout. Only 127.0.0.1 addresses are used.
"""
import argparse
import json
import os
import shutil
import sys
import threading
import time

from rocketmq.client import ConsumeStatus, Message, Producer, PushConsumer, SendStatus
from rocketmq.ffi import MessageModel


def credentials(client, args):
    """--access-key/--secret-key: sign every request (RocketMQ ACL session credentials)."""
    if args.access_key:
        client.set_session_credentials(args.access_key, args.secret_key, args.channel)


def client_log_dir(producer):
    """A fresh folder for the C++ client's own log (INFO), so a failed send can show what the
    client saw: which request failed, and how (its exceptions carry no more than "No route
    info of this topic" after five failed attempts)."""
    import tempfile
    from rocketmq.ffi import dll, _CLogLevel
    path = tempfile.mkdtemp(prefix="sluice-cpp-log-")
    dll.SetProducerLogPath(producer._handle, path.encode())
    dll.SetProducerLogLevel(producer._handle, _CLogLevel.INFO)
    return path


def client_log_tail(path, lines=60):
    """The last `lines` lines of every file the client logged to under `path`."""
    out = []
    for root, _, files in os.walk(path):
        for name in sorted(files):
            try:
                with open(os.path.join(root, name), errors="replace") as f:
                    out.extend(f"{name}: {l.rstrip()}" for l in f.readlines()[-lines:])
            except OSError as e:
                out.append(f"{name}: unreadable: {e}")
    return out[-lines:]


# Until a producer's first send succeeds, a send that raises is tried again this many times
# (--send-retries), after SEND_RETRY_PAUSE seconds each. The C++ client gives up ("No route
# info of this topic") after its own attempts, which come back to back: right after start()
# its first send can race the heartbeat thread's connection to the broker (CreateTransport
# answers null while another thread connects: "response is null"). Once one send succeeded,
# nothing is retried: a failure then is a broker or protocol fault the tests must see. A send
# that still fails after the last retry is a failure, reported as before. Only a raised send
# is retried: a non-OK status means the broker stored the message.
SEND_RETRIES = 3
SEND_RETRY_PAUSE = 0.5


class Retries(list):
    """The retries of one producer's sends, as {"key", "error"} (the error of the attempt each
    follows); `succeeded` turns true at its first successful send, after which none is
    retried."""
    succeeded = False


def send_with_retries(send, args, retries, key):
    """Calls send() and returns its result; before the producer's first success, when it
    raises, calls it again after a pause, at most args.send_retries more times, then raises
    the last error."""
    for attempt in range(args.send_retries + 1):
        try:
            result = send()
            retries.succeeded = True
            return result
        except Exception as e:  # the C++ client raises on error codes
            if retries.succeeded or attempt == args.send_retries:
                raise
            retries.append({"key": key, "error": str(e)})
            time.sleep(SEND_RETRY_PAUSE)


def produce(args):
    producer = Producer(args.group, orderly=False, timeout=args.send_timeout_ms)
    producer.set_name_server_address(args.ns)
    credentials(producer, args)
    log_dir = client_log_dir(producer)
    try:
        result = produce_with(producer, args, log_dir)
    finally:
        shutil.rmtree(log_dir, ignore_errors=True)
    print(json.dumps(result))


def produce_with(producer, args, log_dir):
    producer.start()
    tags = args.tags.split(",") if args.tags else [None]
    sent, failures, retries = [], [], Retries()
    try:
        for i in range(args.start, args.start + args.count):
            key = f"{args.key_prefix}{i}"
            msg = Message(args.topic)
            msg.set_keys(key)
            tag = tags[i % len(tags)]
            if tag:
                msg.set_tags(tag)
            msg.set_body(f"body-{key}")
            if args.delay_level:
                msg.set_delay_time_level(args.delay_level)
            try:
                r = send_with_retries(lambda: producer.send_sync(msg), args, retries, key)
                if r.status != SendStatus.OK:
                    failures.append({"key": key, "status": int(r.status)})
                else:
                    sent.append({"key": key, "msg_id": r.msg_id, "offset": r.offset})
            except Exception as e:  # the C++ client raises on error codes
                failures.append({"key": key, "error": str(e)})
    finally:
        producer.shutdown()
    result = {"sent": len(sent), "failures": failures[:20], "failure_count": len(failures),
              "send_retries": len(retries), "retried": retries[:20], "sample": sent[:3]}
    if failures or retries:
        result["client_log"] = client_log_tail(log_dir) or [f"nothing logged under {log_dir}"]
    return result


def produce_orderly(args):
    producer = Producer(args.group, orderly=True, timeout=args.send_timeout_ms)
    producer.set_name_server_address(args.ns)
    credentials(producer, args)
    producer.start()
    sent, failures, retries = 0, [], Retries()
    try:
        for seq in range(args.count):
            for shard in range(args.shards):
                key = f"shard-{shard}"
                msg = Message(args.topic)
                msg.set_keys(f"{key}-{seq}")
                msg.set_tags("ordered")
                msg.set_body(f"{key}:{seq}")
                try:
                    # A retry right after a failure keeps the shard's order (a stored copy of
                    # the failed send is adjacent to the retried one).
                    send_with_retries(
                        lambda: producer.send_orderly_with_sharding_key(msg, key),
                        args, retries, f"{key}-{seq}")
                    sent += 1
                except Exception as e:
                    failures.append(str(e))
    finally:
        producer.shutdown()
    print(json.dumps({"sent": sent, "failures": failures[:20], "failure_count": len(failures),
                      "send_retries": len(retries), "retried": retries[:20]}))


def consume(args):
    lock = threading.Lock()
    received = []
    keys = set()
    # --fail-first N: answer RECONSUME_LATER to the first N deliveries of each key (retry tests);
    # a key counts as received only once it was consumed successfully.
    failures = {}
    # --idle S: stop once no message arrived for S seconds since the last one, so a consumer
    # sharing its group stops when the stream dries up, however slow the machine is. The clock
    # starts at the first delivery (never at ready: a loaded machine may take longer than S to
    # send the first message); until then only --timeout ends the wait.
    last = [None]

    def on_message(msg):
        last[0] = time.time()
        if args.fail_first:
            key = msg.keys.decode() if isinstance(msg.keys, bytes) else msg.keys
            with lock:
                n = failures.get(key, 0)
                if n < args.fail_first:
                    failures[key] = n + 1
                    received.append({
                        "key": key,
                        "reconsume": msg.reconsume_times,
                        "at": int(time.time() * 1000),
                        "failed": True,
                    })
                    return ConsumeStatus.RECONSUME_LATER
        with lock:
            received.append({
                "key": msg.keys.decode() if isinstance(msg.keys, bytes) else msg.keys,
                "tag": msg.tags.decode() if isinstance(msg.tags, bytes) else msg.tags,
                "body": msg.body.decode(errors="replace") if isinstance(msg.body, bytes) else msg.body,
                "qid": msg.queue_id,
                "qoff": msg.queue_offset,
                "reconsume": msg.reconsume_times,
                "born": msg.born_timestamp,
                "stored": msg.store_timestamp,
                "at": int(time.time() * 1000),
            })
            keys.add(received[-1]["key"])
        return ConsumeStatus.CONSUME_SUCCESS

    model = MessageModel.BROADCASTING if args.broadcast else MessageModel.CLUSTERING
    consumer = PushConsumer(args.group, orderly=args.orderly, message_model=model)
    if args.instance:
        consumer.set_instance_name(args.instance)
    consumer.set_name_server_address(args.ns)
    credentials(consumer, args)
    consumer.set_thread_count(1 if args.orderly else 4)
    consumer.subscribe(args.topic, on_message, args.expression)
    consumer.start()
    if args.ready_file:
        with open(args.ready_file, "w") as f:
            f.write("started\n")
    deadline = time.time() + args.timeout
    while time.time() < deadline:
        with lock:
            if args.expect and len(keys) >= args.expect:
                break
        seen = last[0]
        if args.idle and seen is not None and time.time() - seen >= args.idle:
            break
        if args.stop_file and os.path.exists(args.stop_file):
            break
        time.sleep(0.05)
    time.sleep(args.settle)
    with lock:
        out = {"count": len(received), "unique": len(keys)}
        if args.full:
            out["messages"] = received
        else:
            out["keys"] = sorted(keys)
            out["tags"] = sorted({m["tag"] or "" for m in received})
    print(json.dumps(out))
    sys.stdout.flush()
    # The shipped librocketmq.so (2.1.0_cvs) crashes inside ShutdownPushConsumer
    # (shutdownMessageTraceInnerProducer), before it would persist offsets. So the consumer is
    # not shut down: the client's own timer persists offsets every 5 s (wait with --settle), and
    # the broker sees the connection close.
    os._exit(0)


def txn(args):
    """Transactional producer (TransactionMQProducer). Sends --count half messages whose local
    transaction answers --local; answers every check-back with --check. Optionally sends one
    committed warm-up message to --warm-topic first (so the broker knows this producer before its
    30 s heartbeat). Waits until --expect-checks checks arrived or --hold seconds passed, then
    prints what it sent and every check it got. --exit-hard ends with os._exit (a producer that
    vanishes without unregistering); otherwise the producer shuts down cleanly."""
    from rocketmq.client import TransactionMQProducer, TransactionStatus
    status = {"commit": TransactionStatus.COMMIT, "rollback": TransactionStatus.ROLLBACK,
              "unknown": TransactionStatus.UNKNOWN}
    lock = threading.Lock()
    checks = []

    def on_check(msg):
        with lock:
            checks.append({
                "key": msg.keys.decode() if isinstance(msg.keys, bytes) else msg.keys,
                "id": msg.id.decode() if isinstance(msg.id, bytes) else msg.id,
                "topic": msg.topic.decode() if isinstance(msg.topic, bytes) else msg.topic,
                "queue_offset": msg.queue_offset,
                "commit_log_offset": msg.commit_log_offset,
                "times": (msg.get_property("TRANSACTION_CHECK_TIMES") or b"").decode(),
                "at": int(time.time() * 1000),
            })
        return status[args.check]

    def local(msg, user_args):
        return status[args.local]

    producer = TransactionMQProducer(args.group, on_check, timeout=args.send_timeout_ms)
    producer.set_name_server_address(args.ns)
    credentials(producer, args)
    producer.start()
    sent, failures, retries = [], [], Retries()
    if args.warm_topic:
        warm = Message(args.warm_topic)
        warm.set_keys("warm-" + args.group)
        warm.set_body("warm")
        try:
            send_with_retries(
                lambda: producer.send_message_in_transaction(
                    warm, lambda m, a: TransactionStatus.COMMIT, None),
                args, retries, "warm")
        except Exception as e:
            failures.append({"key": "warm", "error": str(e)})
    for i in range(args.start, args.start + args.count):
        key = f"{args.key_prefix}{i}"
        msg = Message(args.topic)
        msg.set_keys(key)
        msg.set_tags("txn")
        msg.set_body(f"body-{key}")
        try:
            r = send_with_retries(
                lambda: producer.send_message_in_transaction(msg, local, None), args, retries,
                key)
            sent.append({"key": key, "msg_id": r.msg_id, "offset": r.offset, "status": int(r.status)})
        except Exception as e:
            failures.append({"key": key, "error": str(e)})
    if args.ready_file:
        with open(args.ready_file, "w") as f:
            f.write("sent\n")
    deadline = time.time() + args.hold
    while time.time() < deadline:
        with lock:
            if args.expect_checks and len(checks) >= args.expect_checks:
                break
        time.sleep(0.05)
    time.sleep(args.settle)
    with lock:
        out = {"sent": len(sent), "results": sent, "failures": failures[:20],
               "failure_count": len(failures), "send_retries": len(retries),
               "retried": retries[:20], "checks": list(checks)}
    print(json.dumps(out))
    sys.stdout.flush()
    if args.exit_hard:
        os._exit(0)
    producer.shutdown()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--ns", required=True)
    # ACL session credentials (the secret is never printed).
    p.add_argument("--access-key", default="")
    p.add_argument("--secret-key", default="")
    p.add_argument("--channel", default="ALIYUN")
    sub = p.add_subparsers(dest="cmd", required=True)

    pr = sub.add_parser("produce")
    pr.add_argument("--group", default="compat_producer")
    pr.add_argument("--topic", required=True)
    pr.add_argument("--count", type=int, required=True)
    pr.add_argument("--start", type=int, default=0)
    pr.add_argument("--key-prefix", default="k")
    pr.add_argument("--tags", default="")
    pr.add_argument("--delay-level", type=int, default=0)
    pr.add_argument("--send-timeout-ms", type=int, default=5000)
    pr.add_argument("--send-retries", type=int, default=SEND_RETRIES)

    po = sub.add_parser("produce-orderly")
    po.add_argument("--group", default="compat_orderly_producer")
    po.add_argument("--topic", required=True)
    po.add_argument("--count", type=int, required=True)
    po.add_argument("--shards", type=int, default=4)
    po.add_argument("--send-timeout-ms", type=int, default=5000)
    po.add_argument("--send-retries", type=int, default=SEND_RETRIES)

    co = sub.add_parser("consume")
    co.add_argument("--group", required=True)
    co.add_argument("--topic", required=True)
    co.add_argument("--expression", default="*")
    co.add_argument("--expect", type=int, default=0)
    co.add_argument("--timeout", type=float, default=60)
    co.add_argument("--settle", type=float, default=1.0)
    co.add_argument("--idle", type=float, default=0)
    co.add_argument("--orderly", action="store_true")
    co.add_argument("--broadcast", action="store_true")
    co.add_argument("--instance", default="")
    co.add_argument("--full", action="store_true")
    co.add_argument("--ready-file", default="")
    co.add_argument("--fail-first", type=int, default=0)
    # Stop (then --settle) once this file exists: the test saw what it waited for.
    co.add_argument("--stop-file", default="")

    tx = sub.add_parser("txn")
    tx.add_argument("--group", default="compat_txn_producer")
    tx.add_argument("--topic", required=True)
    tx.add_argument("--count", type=int, default=1)
    tx.add_argument("--start", type=int, default=0)
    tx.add_argument("--key-prefix", default="t")
    tx.add_argument("--local", choices=["commit", "rollback", "unknown"], default="commit")
    tx.add_argument("--check", choices=["commit", "rollback", "unknown"], default="unknown")
    tx.add_argument("--expect-checks", type=int, default=0)
    tx.add_argument("--hold", type=float, default=0)
    tx.add_argument("--settle", type=float, default=0.5)
    tx.add_argument("--warm-topic", default="")
    tx.add_argument("--ready-file", default="")
    tx.add_argument("--exit-hard", action="store_true")
    tx.add_argument("--send-timeout-ms", type=int, default=5000)
    tx.add_argument("--send-retries", type=int, default=SEND_RETRIES)

    args = p.parse_args()
    {"produce": produce, "produce-orderly": produce_orderly, "consume": consume,
     "txn": txn}[args.cmd](args)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
