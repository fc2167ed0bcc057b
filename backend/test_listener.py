"""The listener holder in-process with grpcio as the client: standby UNAVAILABLE, hand-off of the
sockets, `serving` moves the calls to the backend, a newer backend makes the older hand over."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from backend.config import Settings
from backend.h2grpc import H2GrpcServer
from backend.listener import Holder, receive
from backend.proto import dns_pb2, dns_pb2_grpc
from lab.proc import free_port, wait_for_async


async def call(channel: grpc.aio.Channel, msg: bytes = b"q") -> bytes:
    return (await dns_pb2_grpc.DnsServiceStub(channel).Query(dns_pb2.DnsPacket(msg=msg), timeout=5)).msg


async def answered(channel: grpc.aio.Channel, want: bytes) -> bool:
    return await call(channel) == want


def test_standby_hand_off_serving_and_handover(tmp_path: Path) -> None:
    settings = Settings(grpc_listen=f"127.0.0.1:{free_port()}", http_listen=f"127.0.0.1:{free_port()}",
                        admin_listen="")

    async def scenario() -> None:
        stop = asyncio.Event()
        holder = Holder(settings, str(tmp_path / "l.sock"))
        running = asyncio.ensure_future(holder.run(stop))
        await wait_for_async((tmp_path / "l.sock").exists, what="the holder's socket", timeout=10)
        async with grpc.aio.insecure_channel(settings.grpc_listen) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call(channel)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE  # nobody serves: the standby says so

            first = await receive(str(tmp_path / "l.sock"))
            assert set(first.sockets) == {"grpc", "http"}
            assert first.sockets["grpc"].getsockname()[1] == int(settings.grpc_listen.rsplit(":", 1)[1])
            one = H2GrpcServer(lambda m, _p: b"one:" + m)
            await one.start("", 0, sock=first.sockets["grpc"])
            first.say("serving")
            # GOAWAY from the standby, then grpc-core reconnects to the backend
            await wait_for_async(lambda: answered(channel, b"one:q"), what="calls answered by `one`",
                                 timeout=15)
            assert await call(channel) == b"one:q"

            second = await receive(str(tmp_path / "l.sock"))
            two = H2GrpcServer(lambda m, _p: b"two:" + m)
            await two.start("", 0, sock=second.sockets["grpc"])
            second.say("serving")
            assert await asyncio.wait_for(first.reader.readline(), 5) == b"handover\n"
            await one.stop(1)  # what `serve` does on handover: GOAWAY, no new calls
            first.writer.close()
            await wait_for_async(lambda: answered(channel, b"two:q"), what="calls answered by `two`",
                                 timeout=15)
            assert await call(channel) == b"two:q"

            second.say("stopping")
            await two.stop(1)
            refused: list[grpc.StatusCode] = []

            async def standby() -> bool:
                try:
                    await call(channel)
                except grpc.aio.AioRpcError as e:
                    refused.append(e.code())
                    return True
                return False

            await wait_for_async(standby, what="the standby back, refusing calls", timeout=15)
            assert refused == [grpc.StatusCode.UNAVAILABLE]
            second.writer.close()
        stop.set()
        await asyncio.wait_for(running, 10)

    asyncio.run(scenario())
