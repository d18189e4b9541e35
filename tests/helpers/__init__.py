"""Helpers shared by the tests: real brokers, the agent process, load."""
