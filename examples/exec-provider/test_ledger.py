#!/usr/bin/env python3
"""Tests of ledger.py over its real interface: a child process spoken to over pipes.

Run with:  python3 -m unittest examples/exec-provider/test_ledger.py
       or: python3 examples/exec-provider/test_ledger.py
"""

import json
import os
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
LEDGER = os.path.join(HERE, "ledger.py")

E_NOTIMPL = 0x80004001
E_INVALIDARG = 0x80070057
E_NOT_FOUND = 0x80070490
E_ALREADY_EXISTS = 0x800700B7


class Ledger:
    """A running ledger.py and a request counter, like the engine's ExecProvider."""

    def __init__(self, ledger_file, extra_env=None):
        env = dict(os.environ, LEDGER_FILE=ledger_file, **(extra_env or {}))
        self.proc = subprocess.Popen(
            [sys.executable, LEDGER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, env=env)
        self.next_id = 0

    def send(self, method, **fields):
        self.next_id += 1
        req = {"id": self.next_id, "method": method, **fields}
        self.proc.stdin.write((json.dumps(req) + "\n").encode())
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            return None  # the process died
        resp = json.loads(line)
        assert resp["id"] == self.next_id, resp
        return resp

    def call(self, method, procedure, key, execute_data=None, **fields):
        return self.send(method, procedure=procedure, idempotencyKey=key,
                         context={"txnId": "t", "stepId": key, "attempt": 1,
                                  "namespace": "Ledger Provider"},
                         providerContext=None, executeData=execute_data, **fields)

    def close(self):
        self.proc.stdin.close()
        status = self.proc.wait(timeout=10)
        self.proc.stdout.close()
        self.proc.stderr.close()
        return status


class LedgerTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.file = os.path.join(self.tmp.name, "ledger.json")
        self.ledger = Ledger(self.file)

    def tearDown(self):
        if self.ledger.proc.poll() is None:
            self.ledger.close()
        self.tmp.cleanup()

    def balance(self, name):
        resp = self.ledger.call("execute", "GetBalance", "read", {"name": name})
        self.assertTrue(resp["ok"], resp)
        return resp["executeData"]["balance"]

    def test_describe_lists_the_procedures(self):
        resp = self.ledger.send("describe", protocol=1)
        self.assertTrue(resp["ok"])
        self.assertEqual(resp["protocol"], 1)
        names = {p["name"]: p for p in resp["procedures"]}
        self.assertEqual(set(names), {"CreateAccount", "Credit", "GetBalance"})
        self.assertEqual(names["GetBalance"]["kind"], "read")
        self.assertEqual(names["Credit"]["undo"], "reversible")

    def test_create_credit_balance_and_undo(self):
        resp = self.ledger.call("execute", "CreateAccount", "k1", {"name": "alice", "credit": "100"})
        self.assertTrue(resp["ok"], resp)
        self.assertEqual(resp["executeData"], {"name": "alice", "credit": "100", "balance": 100})
        create_undo = resp["undo"]
        resp = self.ledger.call("execute", "Credit", "k2", {"name": "alice", "amount": 5})
        self.assertEqual(resp["executeData"]["balance"], 105)
        credit_undo = resp["undo"]
        self.assertEqual(self.balance("alice"), 105)
        # Undo the credit, twice: the second time is a no-op.
        for _ in range(2):
            resp = self.ledger.call("undo", "Credit", "k2", undo=credit_undo)
            self.assertTrue(resp["ok"], resp)
        self.assertEqual(self.balance("alice"), 100)
        resp = self.ledger.call("undo", "CreateAccount", "k1", undo=create_undo)
        self.assertTrue(resp["ok"], resp)
        resp = self.ledger.call("execute", "GetBalance", "r", {"name": "alice"})
        self.assertFalse(resp["ok"])
        self.assertEqual(resp["error"]["code"], E_NOT_FOUND)

    def test_a_repeated_key_is_applied_once(self):
        self.ledger.call("execute", "CreateAccount", "k1", {"name": "bob"})
        first = self.ledger.call("execute", "Credit", "k2", {"name": "bob", "amount": 7})
        again = self.ledger.call("execute", "Credit", "k2", {"name": "bob", "amount": 7})
        self.assertEqual(first["executeData"], again["executeData"])
        self.assertEqual(first["undo"], again["undo"])
        self.assertEqual(self.balance("bob"), 7)

    def test_crash_after_saving_then_retry(self):
        self.ledger.close()
        marker = os.path.join(self.tmp.name, "crashed")
        self.ledger = Ledger(self.file, {"LEDGER_CRASH_ONCE": marker})
        self.assertIsNone(self.ledger.call("execute", "CreateAccount", "k1", {"name": "eve", "credit": 3}))
        self.assertEqual(self.ledger.proc.wait(timeout=10), 3)
        self.ledger.proc.stdin.close()
        self.ledger.proc.stdout.close()
        self.ledger.proc.stderr.close()
        self.ledger = Ledger(self.file, {"LEDGER_CRASH_ONCE": marker})
        resp = self.ledger.call("execute", "CreateAccount", "k1", {"name": "eve", "credit": 3})
        self.assertTrue(resp["ok"], resp)
        self.assertEqual(resp["executeData"]["balance"], 3)
        # Recovery: the key is known as applied, with its undo record; another is not.
        resp = self.ledger.call("recover", "CreateAccount", "k1", {"name": "eve", "credit": 3})
        self.assertEqual(resp["applied"], True)
        self.assertEqual(resp["undo"], {"account": "eve", "key": "k1"})
        resp = self.ledger.call("recover", "CreateAccount", "k2", {"name": "eve"})
        self.assertEqual(resp["applied"], False)

    def test_preview(self):
        resp = self.ledger.call("preview", "CreateAccount", "k1", {"name": "carol", "credit": 2})
        self.assertIn("change", resp["preview"])
        self.ledger.call("execute", "CreateAccount", "k1", {"name": "carol", "credit": 2})
        resp = self.ledger.call("preview", "CreateAccount", "k1", {"name": "carol"})
        self.assertIn("noChange", resp["preview"])
        resp = self.ledger.call("preview", "CreateAccount", "k9", {"name": "carol"})
        self.assertEqual(resp["error"]["code"], E_ALREADY_EXISTS)
        resp = self.ledger.call("preview", "Credit", "k3", {"name": "carol", "amount": 1})
        self.assertEqual(resp["preview"], {"unknown": True})

    def test_errors(self):
        resp = self.ledger.call("execute", "Credit", "k1", {"name": "nobody", "amount": 1})
        self.assertEqual(resp["error"]["code"], E_NOT_FOUND)
        self.assertFalse(resp["error"]["transient"])
        resp = self.ledger.call("execute", "CreateAccount", "k2", {"credit": 1})
        self.assertEqual(resp["error"]["code"], E_INVALIDARG)
        resp = self.ledger.call("execute", "Credit", "k3", {"name": "x", "amount": "lots"})
        self.assertEqual(resp["error"]["code"], E_INVALIDARG)
        resp = self.ledger.call("prepare", "Credit", "k4", undo={})
        self.assertEqual(resp["error"]["code"], E_NOTIMPL)
        # Garbage in: ignored (logged on stderr), the next request still works.
        self.ledger.proc.stdin.write(b"not json\n")
        self.assertTrue(self.ledger.send("describe")["ok"])

    def test_exits_cleanly_on_eof(self):
        self.assertEqual(self.ledger.close(), 0)


if __name__ == "__main__":
    unittest.main()
