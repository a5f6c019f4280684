"""A job's namespace to and from a real Kernel Gateway on 127.0.0.1, through a TCP proxy
that the tests make fail: binary on the wire both ways, and a link dropped or a gateway
dead mid-transfer ends in the very values or in one clear error, never in a hang."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gatewayserver import TOKEN, Gateway
from netproxy import Proxy

import jupyter_bgjobs as bj

pytest.importorskip("kernel_gateway")
MIB = 1 << 20
PAYLOAD = 40 * MIB  # ten chunks each way


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw = Gateway(tmp_path_factory.mktemp("gateway"))
    yield gw
    gw.stop()


@pytest.fixture
def proxy(gateway: Gateway) -> Iterator[Proxy]:
    px = Proxy(gateway.port)
    yield px
    px.close()
    _delete_left(gateway)


@pytest.fixture(autouse=True)
def token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JUPYTER_GATEWAY_AUTH_TOKEN", TOKEN)


def _delete_left(gateway: Gateway) -> None:
    """A kernel whose DELETE the failed link refused is still on the gateway: end it."""
    if gateway.proc.poll() is not None:
        return
    for kernel in gateway.kernels():
        gateway.delete_kernel(kernel["id"])


def _doubled(ip: Any, url: str, name: str) -> Any:
    arr = np.arange(PAYLOAD // 8, dtype=np.float64)
    ip.user_ns["arr"] = arr
    job = bj.run_cell("out = arr * 2", name=name, env="arr", results="none", gateway=url)
    return job.wait(120), arr


def test_an_array_travels_binary_both_ways(ip: Any, gateway: Gateway, proxy: Proxy) -> None:
    job, arr = _doubled(ip, proxy.url, "binary")
    assert job.state == "succeeded", job.reason
    np.testing.assert_array_equal(job.results.out, arr * 2)
    # Binary buffers: the websocket carried the payload and little more each way, where
    # base64 text would have taken a third more.
    assert PAYLOAD <= proxy.carried["up"] < PAYLOAD * 1.05
    assert PAYLOAD <= proxy.carried["down"] < PAYLOAD * 1.05
    assert gateway.no_kernels_left()


@pytest.mark.parametrize("direction", ["up", "down"])
def test_a_link_dropped_mid_transfer_is_reopened_and_the_values_arrive_whole(
    ip: Any, gateway: Gateway, proxy: Proxy, direction: str
) -> None:
    # Halfway through the seed (up) or the results (down), the link drops.
    proxy.trip(direction, PAYLOAD // 2)
    job, arr = _doubled(ip, proxy.url, f"dropped_{direction}")
    assert proxy.cuts == 1
    assert job.state == "succeeded", job.reason
    np.testing.assert_array_equal(job.results.out, arr * 2)
    assert gateway.no_kernels_left()


def test_a_link_that_stays_down_mid_transfer_fails_the_job_saying_so(
    ip: Any, gateway: Gateway, proxy: Proxy
) -> None:
    def down_for_good() -> None:
        proxy.refuse = True
        proxy.cut()

    proxy.trip("up", PAYLOAD // 2, down_for_good)
    job, _ = _doubled(ip, proxy.url, "down_for_good")
    assert job.done and job.state in ("failed", "died")
    assert "websocket" in job.reason and "could not be reopened" in job.reason
    assert TOKEN not in job.reason
    assert job.results is None or "out" not in vars(job.results)  # never a partial result


def test_a_gateway_that_dies_while_results_travel_is_reported(ip: Any, tmp_path: Path) -> None:
    gw = Gateway(tmp_path)
    px = Proxy(gw.port)
    try:
        px.trip("down", PAYLOAD // 2, lambda: gw.stop(hard=True))
        job, _ = _doubled(ip, px.url, "gateway_died")
        assert job.done and job.state in ("failed", "died")
        assert "gateway" in job.reason and TOKEN not in job.reason
        lost = [s for s in job.skipped if s["direction"] == "out"]
        assert [s["name"] for s in lost] == ["out"] and "lost on the way back" in lost[0]["reason"]
    finally:
        px.close()
        if gw.proc.poll() is None:
            gw.stop()


def test_the_wire_format_is_the_servers(gateway: Gateway) -> None:
    """Our binary messages are what jupyter_server's websocket reads and writes."""
    from jupyter_server.services.kernels.connection.base import (
        deserialize_binary_message,
        serialize_binary_message,
    )

    from jupyter_bgjobs._backends.gateway import pack_message, unpack_message

    msg = {"header": {"msg_id": "1"}, "parent_header": {}, "metadata": {}, "content": {}}
    ours = pack_message({**msg, "channel": "shell"}, [b"abc", memoryview(b"de")])
    theirs = deserialize_binary_message(ours)
    assert [bytes(b) for b in theirs["buffers"]] == [b"abc", b"de"]
    back = unpack_message(serialize_binary_message({**msg, "buffers": [b"xyz"]}))
    assert [bytes(b) for b in back["buffers"]] == [b"xyz"] and back["header"] == msg["header"]
    assert json.loads(pack_message(msg, [])) == msg  # no buffers: plain JSON text
