#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""bench/grpc_server.py: the gRPC upstream of bench/grpc.sh, and its probe.

    grpc_server.py serve PORT [THREADS]   serves bench.Echo/Unary on 127.0.0.1:PORT
                                          (bytes in, the same bytes out; generic
                                          handler, no protoc) until SIGTERM
    grpc_server.py check HOST:PORT        one call; exit 0 when it returns the
                                          request unchanged with status OK
    grpc_server.py body PATH SIZE         writes a gRPC-framed message of SIZE
                                          bytes (the h2load request body)

python3-grpcio (Debian) only.
"""
import signal
import struct
import sys
import threading
from concurrent import futures

import grpc


def ident(b):
    return b


def serve(port, threads):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads),
                         options=[("grpc.so_reuseport", 0)])
    handler = grpc.unary_unary_rpc_method_handler(lambda req, ctx: req, ident, ident)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("bench.Echo", {"Unary": handler})])
    if server.add_insecure_port(f"127.0.0.1:{port}") != port:
        sys.exit(f"grpc_server: cannot listen on 127.0.0.1:{port}")
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    server.stop(grace=0).wait(5)


def check(target):
    with grpc.insecure_channel(target) as ch:
        f = ch.unary_unary("/bench.Echo/Unary", request_serializer=ident, response_deserializer=ident)
        try:
            out = f(b"probe", timeout=2)
        except grpc.RpcError as e:
            sys.exit(f"check {target}: {e.code()} {e.details()}")
    sys.exit(0 if out == b"probe" else f"check {target}: wrong answer {out!r}")


def body(path, size):
    with open(path, "wb") as f:
        f.write(b"\0" + struct.pack(">I", size) + b"x" * size)


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "serve":
        serve(int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 8)
    elif len(sys.argv) == 3 and sys.argv[1] == "check":
        check(sys.argv[2])
    elif len(sys.argv) == 4 and sys.argv[1] == "body":
        body(sys.argv[2], int(sys.argv[3]))
    else:
        sys.exit(__doc__)
