"""Exercises: checks.yaml loading (`spec`), placeholders (`placeholders`), running the
checks against a lab (`run`, `probes`), finding exercises (`catalog`), output (`report`)."""
