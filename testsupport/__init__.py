"""Test support that never ships in the wheel: fault layers for Drive and their handles.

`testsupport.fusefs` is a real FUSE filesystem (its own process, as Colab's Drive is) whose faults
are switched at run time; `testsupport.fusedrive` starts, steers, kills and remounts it. Importable
by tests, `bench/` scripts and subprocesses with the repository root on sys.path / PYTHONPATH.
"""
