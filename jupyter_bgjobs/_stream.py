"""The notebook's side of a snapshot over the kernel protocol: the seed sent to the job's
kernel and the results fetched from it, in binary chunks (``_inside.kernel.chunks``).

A few chunks are in flight at a time, each acknowledged (a request's ``idle``), so a slow
link slows the sender instead of filling memory on either side, and a chunk a dropped
connection lost is asked for, or sent, again. Every transfer ends in its sha256 check or in
one clear error: a kernel that stops answering is asked again, then given up on, never
waited for forever.
"""

from __future__ import annotations

import collections
import hashlib
import time
from typing import Any

from ._errors import BgJobError
from ._inside.kernel.chunks import CHUNK, Inbox, chunk_count
from ._inside.kernel.wire import EVENT_MIME, unlink_quietly

# Requests in flight: 4 chunks of the seed (16 MiB); 4 fetches of 2 chunks (32 MiB). On
# loopback more in flight is no faster; fewer leaves the link idle between answers.
SEND_WINDOW = 4
FETCH_GROUP = 2
FETCH_WINDOW = 4
# Seconds without any answer for a chunk in flight before it is asked for again.
STALL = 20.0
TRIES = 3
# The job runner, as code run in the job's kernel names it.
RUNNER = "__import__('_bgjobs_runner')"


class TransferError(BgJobError):
    """A snapshot could not travel to or from the job's kernel; the message says why."""


def _gone(kernel: Any) -> str:
    if kernel.alive():
        return ""
    reason = getattr(kernel, "death_reason", None)
    return str(reason()) if reason else "the job's kernel ended"


def _stalled(kernel: Any, doing: str, last: float, now: float) -> bool:
    """Nothing came: raise when the kernel is gone; True when what is in flight has waited
    so long (since ``last``) that it must be asked for again."""
    why = _gone(kernel)
    if why:
        raise TransferError(f"{doing}: {why}")
    return now - last > STALL


def _reconnected(kernel: Any, seen: int) -> bool:
    """Whether the kernel's connection was opened again since ``seen`` (a gateway's
    websocket after a drop): what was in flight may be lost, and is asked for again."""
    return int(getattr(kernel, "connections", 0)) != seen


def _failed(msg: dict[str, Any]) -> str:
    content = msg["content"]
    return f"{content.get('ename', 'Error')}: {content.get('evalue', '')}"


def send_seed(kernel: Any, token: str, data: Any) -> str:
    """Send the seed ``data`` (one buffer) to the kernel, chunk by chunk, and return its
    sha256, by which the kernel checks the whole before the job's code runs."""
    view = memoryview(data).cast("B")
    nbytes = view.nbytes
    digest = hashlib.sha256()
    pending = collections.deque(range(chunk_count(nbytes)))
    inflight: dict[str, list[int]] = {}
    tries: collections.Counter[int] = collections.Counter()
    last = time.monotonic()
    hashed = 0
    seen = getattr(kernel, "connections", 0)
    while pending or inflight:
        while pending and len(inflight) < SEND_WINDOW:
            seq = pending.popleft()
            meta = {"bgjobs_seed": {"seq": seq, "nbytes": nbytes, "chunk": CHUNK}}
            piece = view[seq * CHUNK : (seq + 1) * CHUNK]
            msg_id = kernel.execute(
                f"{RUNNER}.receive({token!r})", silent=True, metadata=meta, buffers=[piece]
            )
            inflight[msg_id] = [seq]
            if seq == hashed:
                # While the chunk travels; a chunk sent again is hashed once.
                digest.update(piece)
                hashed += 1
        msg = kernel.iopub(timeout=0.5)
        now = time.monotonic()
        if _reconnected(kernel, seen):
            seen = getattr(kernel, "connections", 0)
            _again_all(inflight, tries, pending, "the seed's chunk")
            last = now
            continue
        if msg is not None:
            parent = msg["parent_header"].get("msg_id")
            if parent not in inflight:
                continue
            if msg["msg_type"] == "error":
                raise TransferError(f"the job's kernel refused the seed: {_failed(msg)}")
            if msg["msg_type"] == "status" and msg["content"].get("execution_state") == "idle":
                inflight.pop(parent)
                last = now
            continue
        if _stalled(kernel, "the seed could not be sent", last, now):
            _again_all(inflight, tries, pending, "the seed's chunk")
            last = now
    return digest.hexdigest()


def fetch(kernel: Any, key: str, info: dict[str, Any], path: str | None = None) -> Any:
    """Fetch the snapshot the kernel holds under ``key`` (``info``: its ``nbytes``,
    ``sha256`` and ``chunk``) into one buffer, or into the file ``path``; checked."""
    chunk = int(info.get("chunk") or CHUNK)
    box = Inbox(int(info["nbytes"]), chunk, path)
    try:
        _fill(kernel, key, box)
        data = box.check(str(info["sha256"]))
    except BaseException:
        box.close()
        if path is not None:
            unlink_quietly(path)
        raise
    finally:
        try:
            kernel.execute(f"{RUNNER}.drop_out({key!r})", silent=True)
        except Exception:
            pass  # the kernel is going anyway: it ends with the job
    if path is not None:
        box.close()
        return path
    return data


def _fill(kernel: Any, key: str, box: Inbox) -> None:
    want = collections.deque(range(chunk_count(box.nbytes, box.chunk)))
    inflight: dict[str, list[int]] = {}
    tries: collections.Counter[int] = collections.Counter()
    last = time.monotonic()
    seen = getattr(kernel, "connections", 0)
    while want or inflight:
        while want and len(inflight) < FETCH_WINDOW:
            seqs = [want.popleft() for _ in range(min(FETCH_GROUP, len(want)))]
            msg_id = kernel.execute(f"{RUNNER}.send_out({key!r}, {seqs!r})", silent=True)
            inflight[msg_id] = seqs
        msg = kernel.iopub(timeout=0.5)
        now = time.monotonic()
        if _reconnected(kernel, seen):
            seen = getattr(kernel, "connections", 0)
            _again_all(inflight, tries, want, "the results' chunk", box.have)
            last = now
        if msg is not None:
            parent = msg["parent_header"].get("msg_id")
            kind = msg["msg_type"]
            if kind == "display_data":
                event = msg["content"].get("data", {}).get(EVENT_MIME) or {}
                if event.get("type") == "chunk" and event.get("key") == key:
                    try:
                        box.put(int(event["seq"]), msg.get("buffers") or [])
                    except ValueError as exc:
                        raise TransferError(f"a chunk of the results was damaged: {exc}") from None
                    last = now
                continue
            if parent not in inflight:
                continue
            if kind == "error":
                raise TransferError(f"the job's kernel could not send them: {_failed(msg)}")
            if kind == "status" and msg["content"].get("execution_state") == "idle":
                seqs = inflight.pop(parent)
                lost = [s for s in seqs if s not in box.have]
                if lost:
                    _again(lost, tries, want, "the results' chunk")
                last = now
            continue
        if _stalled(kernel, "the results could not be fetched", last, now):
            _again_all(inflight, tries, want, "the results' chunk", box.have)
            last = now


def _again_all(
    inflight: dict[str, list[int]],
    tries: collections.Counter[int],
    queue: collections.deque[int],
    what: str,
    have: Any = (),
) -> None:
    """All in flight may be lost (the connection was opened again, or nothing came for
    too long): what has not arrived (``have``) is asked for, or sent, again."""
    _again([s for seqs in inflight.values() for s in seqs if s not in have], tries, queue, what)
    inflight.clear()


def _again(
    seqs: Any, tries: collections.Counter[int], queue: collections.deque[int], what: str
) -> None:
    for seq in seqs:
        tries[seq] += 1
        if tries[seq] > TRIES:
            raise TransferError(
                f"{what} {seq} did not get through in {TRIES} tries: the link to the job's "
                "kernel keeps failing"
            )
        queue.appendleft(seq)
