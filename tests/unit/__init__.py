"""Fast tests: no daemon, broker or RTSP server processes, no long model runs."""
