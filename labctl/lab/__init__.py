"""The lab lifecycle: up, down, clean, status — orchestration over the pure core and net/."""
