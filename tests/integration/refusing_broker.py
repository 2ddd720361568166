"""An embedded broker that refuses to create one topic, as a Kafka cluster whose ACLs or
create-topic policy forbid it does: Tansu behind a loopback proxy that answers every
CreateTopics request naming that topic with TOPIC_AUTHORIZATION_FAILED and passes everything
else through. Tansu advertises the proxy's address, so every client connection goes through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import subprocess
import threading
from collections.abc import Iterator

from kafka.protocol.admin import CreateTopicsRequest, CreateTopicsResponse

from streams.broker import EmbeddedBroker, free_port, stop_pid, tansu_binary

CREATE_TOPICS = 19  # the API key
TOPIC_AUTHORIZATION_FAILED = 29


@contextlib.contextmanager
def refusing_topic_creation(topic: str) -> Iterator[str]:
    """The proxy's bootstrap address while it and its Tansu run; both stopped afterwards."""
    proxy_port, tansu_port = free_port(), free_port()
    proxy = _Proxy(proxy_port, tansu_port, topic.encode())
    proxy.start()
    tansu = subprocess.Popen(
        [str(tansu_binary()), "broker",
         "--listener-url", f"tcp://127.0.0.1:{tansu_port}",
         "--advertised-listener-url", f"tcp://127.0.0.1:{proxy_port}",
         "--storage-engine", "memory://tansu/"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        EmbeddedBroker(proxy_port).wait_ready()  # answers through the proxy
        yield f"127.0.0.1:{proxy_port}"
    finally:
        stop_pid(tansu.pid)
        tansu.wait()
        proxy.stop()


class _Proxy:
    """Passes Kafka frames between clients and Tansu, one upstream connection per client."""

    def __init__(self, port: int, upstream_port: int, refused: bytes) -> None:
        self.port, self.upstream_port, self.refused = port, upstream_port, refused
        self._loop = asyncio.new_event_loop()
        self._listening = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._stopping: asyncio.Event | None = None

    def start(self) -> None:
        self._thread.start()
        if not self._listening.wait(10):
            raise RuntimeError("the proxy did not start listening")

    def stop(self) -> None:
        if self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(10)

    def _run(self) -> None:
        self._loop.run_until_complete(self._serve())
        self._loop.close()

    async def _serve(self) -> None:
        self._stopping = asyncio.Event()
        clients: set[asyncio.Task[None]] = set()

        def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.ensure_future(self._client(reader, writer))
            clients.add(task)
            task.add_done_callback(clients.discard)

        server = await asyncio.start_server(connected, "127.0.0.1", self.port)
        self._listening.set()
        await self._stopping.wait()
        server.close()
        for task in list(clients):
            task.cancel()
        await asyncio.gather(*clients, return_exceptions=True)
        await server.wait_closed()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:  # Tansu not listening yet: the client connects again
            writer.close()
            return
        back = asyncio.ensure_future(_pipe(up_reader, writer))
        try:
            while True:
                frame = await _read_frame(reader)
                api_key, version = struct.unpack(">hh", frame[4:8])
                if api_key == CREATE_TOPICS and self.refused in frame:
                    writer.write(_refusal(frame[4:], version))
                    await writer.drain()
                else:
                    up_writer.write(frame)
                    await up_writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            back.cancel()
            up_writer.close()
            writer.close()


def _refusal(request_bytes: bytes, version: int) -> bytes:
    """The CreateTopics response refusing every topic of the request."""
    request = CreateTopicsRequest.decode(request_bytes, version=version, header=True)
    answer = CreateTopicsResponse[version](
        throttle_time_ms=0,
        topics=[
            CreateTopicsResponse.CreatableTopicResult(
                name=topic.name,
                error_code=TOPIC_AUTHORIZATION_FAILED,
                error_message="Authorization failed.",
            )
            for topic in request.topics
        ],
    )
    answer.with_header(correlation_id=request.header.correlation_id)
    return bytes(answer.encode(header=True, framed=True))


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readexactly(4)
    (size,) = struct.unpack(">i", head)
    return head + await reader.readexactly(size)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
        while True:
            writer.write(await _read_frame(reader))
            await writer.drain()
