"""The per-lab agent: one long-running process that owns a lab's runtime.

`control` is the client side (start, stop, status, clean-up by PID and namespace);
`daemon` is the process itself (one asyncio loop in one thread: built-in echo servers,
supervised workload processes, the control socket). `__main__` is its entry point:
`python -m labctl.agent <state_dir>`.
"""
