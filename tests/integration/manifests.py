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
            **spec: str) -> str:
    extra = "".join(f"\n  {key}: {value}" for key, value in spec.items())
    fixed = f", nodePort: {node_port}" if node_port else ""
    return (f"apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:{extra}\n"
            f"  selector: {{app: {app}}}\n"
            f"  ports: [{{name: http, port: {port}, targetPort: {target}{fixed}}}]\n")


def pod(name: str, command: str = "") -> str:
    cmd = f", command: {command}" if command else ""
    return (f"apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\n"
            f"spec:\n  containers: [{{name: c{cmd}}}]\n")


def join(*docs: str) -> str:
    return "---\n".join(docs)
