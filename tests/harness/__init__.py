"""The local test harness: a real mosquitto, the GStreamer RTSP server and the daemon as a
process, on free loopback ports. Used by the tests and the benchmarks (from a checkout)."""
