#!/usr/bin/env python3
"""Ledger: an example Provisio exec provider, written with the Python standard library only.

Provisio starts this program and talks to it over stdin/stdout, one JSON object per line
(the "exec-provider protocol", see docs/providers/exec.md). Each request line gets exactly
one response line carrying the same "id". Anything else the program wants to say goes to
stderr, which Provisio forwards to its log.

The ledger keeps accounts in a JSON file named by the LEDGER_FILE environment variable:

    {
      "accounts": {"alice": {"balance": 100, "createdBy": "<idempotency key>"}},
      "applied":  {"<idempotency key>": {"procedure": "...", "executeData": {...},
                                          "undo": {...}}}
    }

"applied" is a journal of every write that has been executed and not undone, keyed by the
call's idempotency key (the same on every retry of a call and after a crash). It is what
makes the provider safe: when this process crashed (or hung) after saving but before
answering, the engine does not know whether the call was applied; it asks "recover" with
the same key, and the journal answers: applied, with the undo record, or not. A call
repeated with the same key is answered with the recorded result instead of applying the
change a second time. Undo removes the journal entry, so a repeated undo finds nothing and
does nothing.

Methods: describe, execute, undo, preview and recover; the two-phase methods prepare and
commit answer E_NOTIMPL.

Procedures:
    CreateAccount(name, credit=0)   write, reversible: undo deletes the account
    Credit(name, amount)            write, reversible: undo takes the amount back
    GetBalance(name)                read

Test hooks: when LEDGER_CRASH_ONCE names a file that does not exist yet, the first write
that gets applied creates that file and the process exits with status 3 right after
saving and before answering, which simulates a crash at the worst possible moment.
LEDGER_HANG_ONCE does the same but, instead of exiting, stops answering (for an hour), so
the engine's call timeout gives up on a call that was applied. LEDGER_DELAY_MS makes every
write wait that many milliseconds, holding the ledger's lock, before it is applied (a slow
backend: a `recover` asked meanwhile by another process waits for the answer).
"""

import contextlib
import json
import os
import sys
import tempfile
import time

try:  # Advisory file locking keeps several ledger processes sharing one file consistent.
    import fcntl
except ImportError:  # pragma: no cover - not on Unix: single process only.
    fcntl = None

PROTOCOL_VERSION = 1

# HRESULT-style error codes, as unsigned 32-bit numbers.
E_FAIL = 0x80004005  # generic failure
E_NOTIMPL = 0x80004001  # method not implemented: the engine treats it as "unsupported"
E_INVALIDARG = 0x80070057  # bad input
E_NOT_FOUND = 0x80070490  # HRESULT_FROM_WIN32(ERROR_NOT_FOUND)
E_ALREADY_EXISTS = 0x800700B7  # HRESULT_FROM_WIN32(ERROR_ALREADY_EXISTS)


# --------------------------------------------------------------------------------------
# What this provider offers: the answer to "describe".
# --------------------------------------------------------------------------------------

PROCEDURES = [
    {
        "name": "CreateAccount",
        "kind": "write",
        "undo": "reversible",
        "description": "Opens an account with an initial credit. Undo deletes it.",
        "inputs": [
            {"name": "name", "type": "string", "required": True,
             "description": "Account name, unique in the ledger."},
            {"name": "credit", "type": "int", "required": False,
             "description": "Initial balance in cents (default 0)."},
        ],
    },
    {
        "name": "Credit",
        "kind": "write",
        "undo": "reversible",
        "description": "Adds an amount to an account. Undo takes it back.",
        "inputs": [
            {"name": "name", "type": "string", "required": True,
             "description": "Account name."},
            {"name": "amount", "type": "int", "required": True,
             "description": "Amount in cents, more than zero."},
        ],
    },
    {
        "name": "GetBalance",
        "kind": "read",
        "undo": "nothing",
        "description": "Returns the balance of an account as `balance`.",
        "inputs": [
            {"name": "name", "type": "string", "required": True,
             "description": "Account name."},
        ],
    },
]


class ProviderFailure(Exception):
    """An error to report to the engine as {"ok": false, "error": {...}}."""

    def __init__(self, message, code=E_FAIL, transient=False):
        super().__init__(message)
        self.code = code
        self.transient = transient


# --------------------------------------------------------------------------------------
# Storage: load, modify and atomically save the JSON file under an exclusive lock.
# --------------------------------------------------------------------------------------

def ledger_path():
    path = os.environ.get("LEDGER_FILE")
    if not path:
        raise ProviderFailure("LEDGER_FILE is not set", E_FAIL)
    return path


@contextlib.contextmanager
def locked_ledger():
    """Yields the ledger as a dict; saves it on exit when the block marked it dirty."""
    path = ledger_path()
    lock = open(path + ".lock", "a")
    try:
        if fcntl is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with open(path, encoding="utf-8") as f:
                ledger = json.load(f)
        except FileNotFoundError:
            ledger = {}
        ledger.setdefault("accounts", {})
        ledger.setdefault("applied", {})
        ledger["_dirty"] = False
        yield ledger
        if ledger.pop("_dirty"):
            save(path, ledger)
    finally:
        lock.close()  # also releases the lock


def save(path, ledger):
    """Writes to a temporary file and renames it over the old one: never half a file."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".ledger-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            # No sort_keys: the recorded executeData must replay in its original order.
            json.dump(ledger, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def crash_hook():
    """The LEDGER_CRASH_ONCE and LEDGER_HANG_ONCE test hooks (see the module docstring)."""
    marker = os.environ.get("LEDGER_CRASH_ONCE")
    if marker and not os.path.exists(marker):
        open(marker, "w").close()
        print("ledger: simulated crash after saving", file=sys.stderr, flush=True)
        os._exit(3)
    marker = os.environ.get("LEDGER_HANG_ONCE")
    if marker and not os.path.exists(marker):
        open(marker, "w").close()
        print("ledger: simulated hang after saving", file=sys.stderr, flush=True)
        time.sleep(3600)


# --------------------------------------------------------------------------------------
# Input helpers. executeData arrives in Provisio's JSON map view: values defined in YAML
# keep their types, values from XML are strings, so numbers may come as "100".
# --------------------------------------------------------------------------------------

def text_input(data, name, required=True):
    value = data.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise ProviderFailure(f"input `{name}` is required", E_INVALIDARG)
        return None
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise ProviderFailure(f"input `{name}` must be text", E_INVALIDARG)
    return str(value).strip()


def int_input(data, name, required=True, default=None):
    value = data.get(name)
    if value is None or value == "":
        if required:
            raise ProviderFailure(f"input `{name}` is required", E_INVALIDARG)
        return default
    if isinstance(value, bool):
        raise ProviderFailure(f"input `{name}` must be an integer, got {value!r}", E_INVALIDARG)
    try:
        return int(str(value).strip())
    except ValueError:
        raise ProviderFailure(f"input `{name}` must be an integer, got {value!r}",
                              E_INVALIDARG) from None


def account(ledger, name):
    acct = ledger["accounts"].get(name)
    if acct is None:
        raise ProviderFailure(f"account `{name}` does not exist", E_NOT_FOUND)
    return acct


# --------------------------------------------------------------------------------------
# Procedures. Each write returns (executeData, undo record); the undo record is handed
# back verbatim by the engine when it rolls the call back.
# --------------------------------------------------------------------------------------

def create_account(ledger, data, key):
    name = text_input(data, "name")
    credit = int_input(data, "credit", required=False, default=0)
    if credit < 0:
        raise ProviderFailure("input `credit` must not be negative", E_INVALIDARG)
    if name in ledger["accounts"]:
        raise ProviderFailure(f"account `{name}` already exists", E_ALREADY_EXISTS)
    ledger["accounts"][name] = {"balance": credit, "createdBy": key}
    out = dict(data, balance=credit)
    return out, {"account": name, "key": key}


def undo_create_account(ledger, undo):
    name = undo.get("account")
    acct = ledger["accounts"].get(name)
    # Only delete the account this call created (not one re-created by someone else).
    if acct is not None and acct.get("createdBy") == undo.get("key"):
        del ledger["accounts"][name]


def credit(ledger, data, key):
    name = text_input(data, "name")
    amount = int_input(data, "amount")
    if amount <= 0:
        raise ProviderFailure("input `amount` must be more than zero", E_INVALIDARG)
    acct = account(ledger, name)
    acct["balance"] += amount
    out = dict(data, balance=acct["balance"])
    return out, {"account": name, "amount": amount, "key": key}


def undo_credit(ledger, undo):
    acct = ledger["accounts"].get(undo.get("account"))
    if acct is not None:
        acct["balance"] -= int(undo.get("amount", 0))


WRITES = {
    "CreateAccount": (create_account, undo_create_account),
    "Credit": (credit, undo_credit),
}


def get_balance(ledger, data):
    name = text_input(data, "name")
    return dict(data, balance=account(ledger, name)["balance"])


# --------------------------------------------------------------------------------------
# Methods: one function per protocol method, each returning the response fields.
# --------------------------------------------------------------------------------------

def as_map(value):
    """The engine sends `null` for empty data; treat it as an empty map."""
    return value if isinstance(value, dict) else {}


def do_describe(req):
    return {"protocol": PROTOCOL_VERSION, "procedures": PROCEDURES}


def do_execute(req):
    procedure = req.get("procedure")
    key = req.get("idempotencyKey")
    data = as_map(req.get("executeData"))
    if procedure == "GetBalance":
        with locked_ledger() as ledger:
            return {"executeData": get_balance(ledger, data), "undo": None}
    if procedure not in WRITES:
        raise ProviderFailure(f"unknown procedure `{procedure}`", E_INVALIDARG)
    if not key:
        raise ProviderFailure("a write needs an idempotencyKey", E_INVALIDARG)
    apply, _ = WRITES[procedure]
    with locked_ledger() as ledger:
        delay_ms = os.environ.get("LEDGER_DELAY_MS")
        if delay_ms:  # test hook: a slow backend, holding its lock (see the module docstring)
            time.sleep(int(delay_ms) / 1000)
        # A retry of a call that was already applied: answer with the recorded result.
        done = ledger["applied"].get(key)
        if done is not None:
            print(f"ledger: {key} already applied, replaying the result",
                  file=sys.stderr, flush=True)
            return {"executeData": done["executeData"], "undo": done["undo"]}
        out, undo = apply(ledger, data, key)
        ledger["applied"][key] = {"procedure": procedure, "executeData": out, "undo": undo}
        ledger["_dirty"] = True
    crash_hook()  # after saving, before answering: the case in-doubt settlement exists for
    return {"executeData": out, "undo": undo}


def do_undo(req):
    procedure = req.get("procedure")
    if procedure not in WRITES:
        raise ProviderFailure(f"`{procedure}` has nothing to undo", E_INVALIDARG)
    undo = as_map(req.get("undo"))
    key = undo.get("key") or req.get("idempotencyKey")
    _, reverse = WRITES[procedure]
    with locked_ledger() as ledger:
        # Undo must be idempotent: only a call still in the journal is reversed.
        if ledger["applied"].pop(key, None) is not None:
            reverse(ledger, undo)
            ledger["_dirty"] = True
    return {}


def do_recover(req):
    """After an engine crash: was the call with this idempotency key applied?

    The engine asks this for calls it sent but never saw answered. The journal knows:
    if the key is there, the call was applied and the engine will undo it with the
    recorded undo record; if not, nothing happened.
    """
    with locked_ledger() as ledger:
        done = ledger["applied"].get(req.get("idempotencyKey"))
    if done is None:
        return {"applied": False}
    return {"applied": True, "undo": done["undo"]}


def do_preview(req):
    procedure = req.get("procedure")
    data = as_map(req.get("executeData"))
    if procedure != "CreateAccount":
        return {"preview": {"unknown": True}}
    name = text_input(data, "name")
    credit_ = int_input(data, "credit", required=False, default=0)
    with locked_ledger() as ledger:
        if req.get("idempotencyKey") in ledger["applied"]:
            return {"preview": {"noChange": f"account `{name}` was already created by this call"}}
        if name in ledger["accounts"]:
            # Execute would fail: say so now rather than promise a change.
            raise ProviderFailure(f"account `{name}` already exists", E_ALREADY_EXISTS)
    return {"preview": {"change": f"would create account `{name}` with balance {credit_}"}}


METHODS = {
    "describe": do_describe,
    "execute": do_execute,
    "undo": do_undo,
    "preview": do_preview,
    "recover": do_recover,
    # "prepare" and "commit" (two-phase) are not implemented: E_NOTIMPL below.
}


# --------------------------------------------------------------------------------------
# The loop: read a line, answer a line, flush. Nothing but responses goes to stdout.
# --------------------------------------------------------------------------------------

def handle(req):
    method = req.get("method")
    handler = METHODS.get(method)
    if handler is None:
        raise ProviderFailure(f"method `{method}` is not implemented", E_NOTIMPL)
    return handler(req)


def respond(req_id, fields=None, error=None):
    if error is None:
        msg = {"id": req_id, "ok": True, **(fields or {})}
    else:
        msg = {"id": req_id, "ok": False, "error": {
            "code": error.code, "message": str(error), "transient": error.transient}}
    sys.stdout.write(json.dumps(msg, separators=(",", ":")) + "\n")
    sys.stdout.flush()  # the engine waits for the line: never leave it in a buffer


def main():
    # Read bytes and decode ourselves so that any newline convention and UTF-8 work.
    for raw in sys.stdin.buffer:
        line = raw.decode("utf-8", errors="replace").strip()
        if not line:
            continue
        try:
            req = json.loads(line)
        except ValueError:
            print(f"ledger: ignoring a line that is not JSON: {line[:80]!r}",
                  file=sys.stderr, flush=True)
            continue
        req_id = req.get("id") if isinstance(req, dict) else None
        try:
            if not isinstance(req, dict):
                raise ProviderFailure("a request must be a JSON object", E_INVALIDARG)
            respond(req_id, handle(req))
        except ProviderFailure as e:
            respond(req_id, error=e)
        except OSError as e:
            # Disk trouble may pass: let the engine retry with the same idempotency key.
            respond(req_id, error=ProviderFailure(f"ledger storage: {e}", E_FAIL, True))
        except Exception as e:  # a bug: report it rather than die with the call pending
            respond(req_id, error=ProviderFailure(f"internal error: {e!r}", E_FAIL))
    # stdin closed: the engine is shutting us down.


if __name__ == "__main__":
    main()
