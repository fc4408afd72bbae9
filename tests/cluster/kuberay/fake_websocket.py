"""Server side of the Kubernetes port-forward websocket (v4.channel.k8s.io), just enough for the
official client's `kubernetes.stream.portforward`: RFC 6455 handshake and framing, channel 0
carries data and channel 1 errors, each opened by a frame holding the port number.
"""

from __future__ import annotations

import base64
import hashlib
import select
import socket
import struct
from http.server import BaseHTTPRequestHandler

_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_BINARY, OP_CLOSE = 0x2, 0x8


def accept_websocket(handler: BaseHTTPRequestHandler) -> socket.socket:
    key = handler.headers["Sec-WebSocket-Key"]
    accept = base64.b64encode(hashlib.sha1((key + _GUID).encode()).digest()).decode()
    handler.send_response(101, "Switching Protocols")
    handler.send_header("Upgrade", "websocket")
    handler.send_header("Connection", "Upgrade")
    handler.send_header("Sec-WebSocket-Accept", accept)
    handler.send_header("Sec-WebSocket-Protocol", "v4.channel.k8s.io")
    handler.end_headers()
    handler.wfile.flush()
    handler.close_connection = True
    return handler.connection


def send_frame(sock: socket.socket, payload: bytes, opcode: int = OP_BINARY) -> None:
    header = bytes([0x80 | opcode])
    n = len(payload)
    if n < 126:
        header += bytes([n])
    elif n < 1 << 16:
        header += bytes([126]) + struct.pack(">H", n)
    else:
        header += bytes([127]) + struct.pack(">Q", n)
    sock.sendall(header + payload)  # server frames are never masked


class FrameReader:
    """Incremental parser of (masked) client frames."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self._buf += data
        frames = []
        while True:
            frame = self._take()
            if frame is None:
                return frames
            frames.append(frame)

    def _take(self) -> tuple[int, bytes] | None:
        buf = self._buf
        if len(buf) < 2:
            return None
        opcode, masked, n, pos = buf[0] & 0x0F, buf[1] & 0x80, buf[1] & 0x7F, 2
        if n == 126:
            if len(buf) < 4:
                return None
            n, pos = struct.unpack(">H", buf[2:4])[0], 4
        elif n == 127:
            if len(buf) < 10:
                return None
            n, pos = struct.unpack(">Q", buf[2:10])[0], 10
        mask = b""
        if masked:
            mask, pos = buf[pos:pos + 4], pos + 4
        if len(buf) < pos + n:
            return None
        payload = buf[pos:pos + n]
        if masked:
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self._buf = buf[pos + n:]
        return opcode, payload


def relay_port(ws: socket.socket, port: int, upstream_port: int, idle_timeout: float = 30.0) -> None:
    """Announce the data/error channels for `port`, then pipe channel 0 to 127.0.0.1:upstream_port.

    When the upstream closes, the server stops relaying but leaves closing to the client, as the
    client drops buffered data if the websocket vanishes under it.
    """
    announce = struct.pack("<H", port)
    send_frame(ws, b"\x00" + announce)
    send_frame(ws, b"\x01" + announce)
    reader = FrameReader()
    with socket.create_connection(("127.0.0.1", upstream_port)) as upstream:
        watching = [ws, upstream]
        while True:
            readable, _, _ = select.select(watching, [], [], idle_timeout)
            if not readable:
                return  # idle client: give up rather than hang the test server
            if upstream in readable:
                data = upstream.recv(65536)
                if data:
                    send_frame(ws, b"\x00" + data)
                else:
                    watching = [ws]
            if ws in readable:
                data = ws.recv(65536)
                if not data:
                    return
                for opcode, payload in reader.feed(data):
                    if opcode == OP_CLOSE:
                        send_frame(ws, b"", OP_CLOSE)
                        return
                    if opcode == OP_BINARY and payload[:1] == b"\x00" and len(watching) == 2:
                        upstream.sendall(payload[1:])
