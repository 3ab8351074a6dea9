"""The least an MQTT relay on trio can cost: the floor under edgebus's latency, not a broker.

One trio task per connection reads packets and acts on the few the latency scenario sends: CONNECT is
answered with CONNACK, SUBSCRIBE with SUBACK (QoS 1 granted), a PUBLISH is acknowledged (QoS 1) and
its bytes are written unchanged to every subscriber, PINGREQ gets PINGRESP; everything else is read
and ignored. No topic matching, no sessions, no store, no flow control: whatever edgebus spends
beyond this relay on a lone message is its own; what this relay spends is Python and trio's.

    python -m bench.trio_floor --port 1883
    python -m bench.run --only latency-q1 --peers mosquitto,edgebus,trio-floor

Only for MQTT 3.1.1 clients that send QoS 0/1 to one topic, as bench/mqttgen.c does.
"""

from __future__ import annotations

import argparse

import trio

CONNACK = b"\x20\x02\x00\x00"
PINGRESP = b"\xd0\x00"
PUBLISH, SUBSCRIBE, PINGREQ, DISCONNECT, CONNECT = 3, 8, 12, 14, 1


class Relay:
    def __init__(self) -> None:
        self.subscribers: list[trio.SocketStream] = []

    async def serve(self, stream: trio.SocketStream) -> None:
        buffer = b""
        try:
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    return
                buffer += data
                replies = []
                while len(buffer) >= 2:
                    # Remaining Length (§2.1.4): 7 bits a byte, the high bit says another follows.
                    length, pos, shift, byte = 0, 1, 0, 0x80
                    while byte >= 0x80 and pos < len(buffer):
                        byte = buffer[pos]
                        length |= (byte & 0x7F) << shift
                        shift += 7
                        pos += 1
                    end = pos + length
                    if byte >= 0x80 or end > len(buffer):  # the header or the body is incomplete
                        break
                    packet, buffer = buffer[:end], buffer[end:]
                    kind = packet[0] >> 4
                    if kind == PUBLISH:
                        if (packet[0] >> 1) & 3:
                            topic_end = pos + 2 + ((packet[pos] << 8) | packet[pos + 1])
                            replies.append(b"\x40\x02" + packet[topic_end:topic_end + 2])
                        for subscriber in self.subscribers:
                            if subscriber is not stream:
                                await subscriber.send_all(packet)
                    elif kind == CONNECT:
                        replies.append(CONNACK)
                    elif kind == SUBSCRIBE:
                        replies.append(b"\x90\x03" + packet[pos:pos + 2] + b"\x01")
                        self.subscribers.append(stream)
                    elif kind == PINGREQ:
                        replies.append(PINGRESP)
                    elif kind == DISCONNECT:
                        return
                if replies:
                    await stream.send_all(b"".join(replies))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            if stream in self.subscribers:
                self.subscribers.remove(stream)
            await stream.aclose()


async def main(host: str, port: int) -> None:
    await trio.serve_tcp(Relay().serve, port, host=host)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    args = parser.parse_args()
    try:
        trio.run(main, args.host, args.port)
    except KeyboardInterrupt:
        pass
