"""Tests that start real processes (daemon, CLI, mosquitto, RTSP server), build engines or
run the model at length."""
