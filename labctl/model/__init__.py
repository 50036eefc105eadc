"""The Kubernetes object subset labctl understands, and loading it from YAML.

`objects` holds the typed objects; `load.load_topology` reads files into them, keeping
every field's position and reporting all problems with file:line:column and a hint.
"""
