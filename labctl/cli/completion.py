"""Shell completion: `labctl completion bash|zsh|fish`, and the dynamic part — lab, pod
and node names read from the labs' state under /run/labctl (cheap: no agent asked).

Click completes commands and options by itself (`_LABCTL_COMPLETE=bash_source labctl`
prints the same script). `attach_completions(cli)` adds the lab-aware completions to the commands'
parameters: every `--lab`, `down LAB`, `exec`/`capture` targets, `logs`/`break`/`heal`
pods, `rules` nodes, `graph` files or labs, `check` exercises.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import click
from click.shell_completion import CompletionItem, get_completion_class

from labctl.cli.common import CONTEXT

SHELLS = ("bash", "zsh", "fish")
COMPLETE_VAR = "_LABCTL_COMPLETE"

Completer = Callable[[click.Context, click.Parameter, str], list[CompletionItem]]


def _labs() -> list[str]:
    from labctl.lab import store

    try:
        return store.known_labs()
    except OSError:
        return []


def _states(ctx: click.Context) -> Iterator[object]:
    """The ClusterState of the lab named by --lab so far, else of every lab; a lab whose
    state cannot be read (not root, half made) is skipped — completion never fails."""
    from labctl.lab import store

    chosen = ctx.params.get("lab_name")
    for lab in [chosen] if chosen else _labs():
        try:
            yield store.current_state(store.state_dir(lab))
        except Exception:  # a missing or unreadable state: no names, no error
            continue


def complete_labs(ctx: click.Context, param: click.Parameter, incomplete: str
                  ) -> list[CompletionItem]:
    return [CompletionItem(lab, help="lab") for lab in _labs() if lab.startswith(incomplete)]


def _pod_items(ctx: click.Context, incomplete: str) -> list[CompletionItem]:
    namespace = ctx.params.get("namespace") or "default"
    seen: dict[str, CompletionItem] = {}
    for state in _states(ctx):
        for pod in state.pods:  # type: ignore[attr-defined]
            where = f"pod {pod.ip} on {pod.node}"
            names = [f"{pod.namespace}/{pod.name}"]
            if pod.namespace == namespace and "/" not in incomplete:
                names = [pod.name]
            for name in names:
                if name.startswith(incomplete):
                    seen.setdefault(name, CompletionItem(name, help=where))
    return sorted(seen.values(), key=lambda c: c.value)


def _node_items(ctx: click.Context, incomplete: str) -> list[CompletionItem]:
    seen: dict[str, CompletionItem] = {}
    for state in _states(ctx):
        for node in state.nodes:  # type: ignore[attr-defined]
            if node.name.startswith(incomplete):
                seen.setdefault(node.name, CompletionItem(
                    node.name, help=f"node {node.ip}, pods {node.pod_cidr}"))
    return sorted(seen.values(), key=lambda c: c.value)


def complete_pods(ctx: click.Context, param: click.Parameter, incomplete: str
                  ) -> list[CompletionItem]:
    return _pod_items(ctx, incomplete)


def complete_nodes(ctx: click.Context, param: click.Parameter, incomplete: str
                   ) -> list[CompletionItem]:
    return _node_items(ctx, incomplete)


def complete_targets(ctx: click.Context, param: click.Parameter, incomplete: str
                     ) -> list[CompletionItem]:
    """What `labctl exec` runs in: nodes, `external`, pods."""
    items = _node_items(ctx, incomplete)
    if "external".startswith(incomplete):
        items.append(CompletionItem("external", help="the client outside the cluster"))
    return items + _pod_items(ctx, incomplete)


def complete_capture_targets(ctx: click.Context, param: click.Parameter, incomplete: str
                             ) -> list[CompletionItem]:
    """Targets, and after `TARGET:` the interfaces worth capturing on."""
    if ":" not in incomplete:
        return complete_targets(ctx, param, incomplete)
    target, _, iface = incomplete.rpartition(":")
    is_node = any(n.value == target for n in _node_items(ctx, target))
    ifaces = ("eth0", "cni0", "any") if is_node else ("eth0", "any")
    return [CompletionItem(f"{target}:{i}") for i in ifaces if i.startswith(iface)]


def complete_graph_sources(ctx: click.Context, param: click.Parameter, incomplete: str
                           ) -> list[CompletionItem]:
    """Files (the shell completes them) or a running lab."""
    return [CompletionItem(incomplete, type="file"), *complete_labs(ctx, param, incomplete)]


def complete_exercises(ctx: click.Context, param: click.Parameter, incomplete: str
                       ) -> list[CompletionItem]:
    """Exercise folders under topologies/ that have checks (or a path: the shell's)."""
    from labctl.exercise import catalog

    found = [CompletionItem(e.name, help=e.title or "exercise")
             for e in catalog.entries() if e.has_checks and e.name.startswith(incomplete)]
    return found or [CompletionItem(incomplete, type="dir")]


# (command path, parameter name) → completer; every `lab_name` option gets the labs.
COMPLETERS: dict[tuple[str, str], Completer] = {
    ("down", "lab"): complete_labs,
    ("exec", "target"): complete_targets,
    ("capture", "target"): complete_capture_targets,
    ("logs", "pod"): complete_pods,
    ("break", "name"): complete_pods,
    ("heal", "name"): complete_pods,
    ("rules", "node"): complete_nodes,
    ("trace", "pod"): complete_pods,
    ("trace", "dest"): complete_pods,
    ("graph", "sources"): complete_graph_sources,
    ("check", "exercise"): complete_exercises,
}


def _walk(cmd: click.Command, path: str) -> Iterator[tuple[str, click.Command]]:
    yield path, cmd
    if isinstance(cmd, click.Group):
        for name, sub in cmd.commands.items():
            yield from _walk(sub, f"{path} {name}".strip())


def attach_completions(cli: click.Command, prefix: str = "") -> None:
    """Give the commands' parameters their lab-aware completions (idempotent; a
    parameter that already has its own completion keeps it). `prefix`: the path of
    `cli` itself when it is a subcommand loaded on demand."""
    for path, cmd in _walk(cli, prefix):
        for param in cmd.params:
            fn = COMPLETERS.get((path, param.name or ""))
            if fn is None and param.name == "lab_name":
                fn = complete_labs
            # click keeps a parameter's custom completer here (click 8.0 and later)
            if fn is not None and getattr(param, "_custom_shell_complete", None) is None:
                param._custom_shell_complete = fn


def script(cli: click.Command, shell: str, prog_name: str = "labctl") -> str:
    """The completion script click writes for `shell`."""
    cls = get_completion_class(shell)
    if cls is None:
        raise click.BadParameter(f"unsupported shell {shell!r}")
    return cls(cli, {}, prog_name, COMPLETE_VAR).source()


@click.command(context_settings=CONTEXT,
               short_help="Print the shell completion script (bash, zsh, fish).")
@click.argument("shell", type=click.Choice(SHELLS))
def completion(shell: str) -> None:
    """Print the shell completion script for SHELL (commands, options, and the names of
    running labs, their pods and nodes).

    \b
    Examples:
      source <(labctl completion bash)                      # add to ~/.bashrc
      labctl completion zsh > "${fpath[1]}/_labctl"         # then restart zsh
      labctl completion fish > ~/.config/fish/completions/labctl.fish
    """
    root = click.get_current_context().find_root()
    click.echo(script(root.command, shell, root.info_name or "labctl"), nl=False)
