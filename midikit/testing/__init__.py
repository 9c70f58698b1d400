"""Test helpers that ship with midikit so tests, benchmarks and subprocesses share them.

`midikit.testing.faults.FaultyFS` injects Drive faults (mount drops, full quota, hung or slow
writes, failing fsync/rename) beneath the code under test, confined to one folder tree.
"""
