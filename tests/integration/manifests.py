"""Building blocks for the integration tests' lab files (YAML text, joined with ---)."""

from __future__ import annotations


def lab(name: str, nodes: int = 2, **spec: str) -> str:
    node_list = ", ".join(f"{{name: node{i}}}" for i in range(1, nodes + 1))
    extra = "".join(f"\n  {key}: {value}" for key, value in spec.items())
    return (f"apiVersion: labctl/v1\nkind: Lab\nmetadata: {{name: {name}}}\n"
            f"spec:\n  nodes: [{node_list}]{extra}\n")


def deployment(name: str, replicas: int, port: int = 8080, port_name: str = "") -> str:
    named = f"name: {port_name}, " if port_name else ""
    return (f"apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:\n"
            f"  replicas: {replicas}\n  selector: {{matchLabels: {{app: {name}}}}}\n"
            f"  template:\n    metadata: {{labels: {{app: {name}}}}}\n    spec:\n"
            f"      containers: [{{name: {name}, ports: [{{{named}containerPort: {port}}}]}}]\n")


def service(name: str, app: str, port: int, target: int | str, node_port: int = 0,
            port_name: str = "http", **spec: str) -> str:
    extra = "".join(f"\n  {key}: {value}" for key, value in spec.items())
    fixed = f", nodePort: {node_port}" if node_port else ""
    named = f"name: {port_name}, " if port_name else ""
    return (f"apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:{extra}\n"
            f"  selector: {{app: {app}}}\n"
            f"  ports: [{{{named}port: {port}, targetPort: {target}{fixed}}}]\n")


def pod(name: str, command: str = "", node: str = "", port: int = 0, app: str = "") -> str:
    """A one-container pod; `node` pins it, `port` declares a containerPort (the built-in
    server listens there unless `command` runs instead), `app` labels it."""
    cmd = f", command: {command}" if command else ""
    ports = f", ports: [{{containerPort: {port}}}]" if port else ""
    labels = f", labels: {{app: {app}}}" if app else ""
    pinned = f"  nodeName: {node}\n" if node else ""
    return (f"apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}{labels}}}\n"
            f"spec:\n{pinned}  containers: [{{name: c{cmd}{ports}}}]\n")


def join(*docs: str) -> str:
    return "---\n".join(docs)
