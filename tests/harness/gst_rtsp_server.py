"""GStreamer RTSP server process behind ``tests.harness.rtsp.RtspServer``.

Runs under Debian's ``/usr/bin/python3`` (the only interpreter that can import the
GStreamer gi bindings; a venv cannot). Each path re-serves an RTP/H.264 feed that an ffmpeg
process sends to a loopback UDP port, so the parent can kill and restart one camera's feed
without touching the server or the other paths.

Usage: gst_rtsp_server.py --port N --path NAME=UDP_PORT [...] [--user U --password P]
Prints ``READY <port>`` once listening; exits when stdin closes or on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

# h264parse re-inserts SPS/PPS before every IDR so a client joining mid-stream can decode.
_LAUNCH = (
    "( udpsrc port={port} buffer-size=4194304 "
    'caps="application/x-rtp,media=video,clock-rate=90000,encoding-name=H264,payload=96" '
    "! rtph264depay ! h264parse config-interval=-1 "
    "! rtph264pay name=pay0 pt=96 config-interval=-1 )"
)
_ROLE = "viewer"


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--path", action="append", default=[], metavar="NAME=UDP_PORT")
    parser.add_argument("--user")
    parser.add_argument("--password")
    return parser.parse_args(argv)


def _auth(user: str, password: str) -> GstRtspServer.RTSPAuth:
    auth = GstRtspServer.RTSPAuth()
    token = GstRtspServer.RTSPToken()
    token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, _ROLE)
    auth.add_basic(GstRtspServer.RTSPAuth.make_basic(user, password), token)
    return auth


def main(argv: list[str]) -> int:
    args = _parse_args(argv)
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    if args.user:
        server.set_auth(_auth(args.user, args.password or ""))
    mounts = server.get_mount_points()
    for item in args.path:
        name, port = item.split("=", 1)
        factory = GstRtspServer.RTSPMediaFactory()
        factory.set_launch(_LAUNCH.format(port=int(port)))
        factory.set_shared(True)
        if args.user:
            factory.add_role_from_structure(
                Gst.Structure.new_from_string(
                    f"{_ROLE}, media.factory.access=(boolean)true, "
                    "media.factory.construct=(boolean)true"
                )
            )
        mounts.add_factory(f"/{name}", factory)
    if server.attach(None) == 0:
        print(f"cannot listen on 127.0.0.1:{args.port}", file=sys.stderr)
        return 1
    loop = GLib.MainLoop()

    def quit_loop(*_: object) -> None:
        GLib.idle_add(loop.quit)

    signal.signal(signal.SIGTERM, quit_loop)
    signal.signal(signal.SIGINT, quit_loop)

    def watch_stdin() -> None:
        # The parent holds our stdin open; EOF means it went away without stopping us.
        sys.stdin.read()
        quit_loop()

    threading.Thread(target=watch_stdin, daemon=True).start()
    print(f"READY {server.get_bound_port()}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
