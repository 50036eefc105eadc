"""Shell completion: `labctl completion bash|zsh|fish` prints a script; the script asks
`labctl __complete WORD... INCOMPLETE` for candidates, one per line as
`KIND<TAB>VALUE<TAB>HELP` (KIND: plain, or file/dir to let the shell complete paths).

Commands, options and choices come from the command declarations; lab, pod and node
names are read from the labs' state under /run/labctl (cheap: no agent asked): every
`--lab`, `down LAB`, `exec`/`capture` targets, `logs`/`break`/`heal`/`trace` pods,
`rules` nodes, `graph` files or labs, `check` exercises.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from labctl.cli.commands import Argument, Choice, Command, Group, Option, PathArg, argument, command

SHELLS = ("bash", "zsh", "fish")


@dataclass(frozen=True)
class Item:
    value: str
    help: str = ""
    type: str = "plain"  # plain | file | dir (the shell completes paths itself)


# (the values of the options given so far, the word being completed) → candidates
Completer = Callable[[dict[str, Any], str], list[Item]]


def _labs() -> list[str]:
    from labctl.lab import store

    try:
        return store.known_labs()
    except OSError:
        return []


def _states(given: dict[str, Any]) -> Iterator[Any]:
    """The ClusterState of the lab named by --lab so far, else of every lab; a lab whose
    state cannot be read (not root, half made) is skipped — completion never fails."""
    from labctl.lab import store

    chosen = given.get("lab_name")
    for lab in [chosen] if chosen else _labs():
        try:
            yield store.current_state(store.state_dir(lab))
        except Exception:  # a missing or unreadable state: no names, no error
            continue


def complete_labs(given: dict[str, Any], incomplete: str) -> list[Item]:
    return [Item(lab, "lab") for lab in _labs() if lab.startswith(incomplete)]


def complete_pods(given: dict[str, Any], incomplete: str) -> list[Item]:
    namespace = given.get("namespace") or "default"
    seen: dict[str, Item] = {}
    for state in _states(given):
        for pod in state.pods:
            where = f"pod {pod.ip} on {pod.node}"
            names = [f"{pod.namespace}/{pod.name}"]
            if pod.namespace == namespace and "/" not in incomplete:
                names = [pod.name]
            for name in names:
                if name.startswith(incomplete):
                    seen.setdefault(name, Item(name, where))
    return sorted(seen.values(), key=lambda c: c.value)


def complete_nodes(given: dict[str, Any], incomplete: str) -> list[Item]:
    seen: dict[str, Item] = {}
    for state in _states(given):
        for node in state.nodes:
            if node.name.startswith(incomplete):
                seen.setdefault(node.name, Item(node.name,
                                                f"node {node.ip}, pods {node.pod_cidr}"))
    return sorted(seen.values(), key=lambda c: c.value)


def complete_targets(given: dict[str, Any], incomplete: str) -> list[Item]:
    """What `labctl exec` runs in: nodes, `external`, pods."""
    items = complete_nodes(given, incomplete)
    if "external".startswith(incomplete):
        items.append(Item("external", "the client outside the cluster"))
    return items + complete_pods(given, incomplete)


def complete_capture_targets(given: dict[str, Any], incomplete: str) -> list[Item]:
    """Targets, and after `TARGET:` the interfaces worth capturing on."""
    if ":" not in incomplete:
        return complete_targets(given, incomplete)
    target, _, iface = incomplete.rpartition(":")
    is_node = any(n.value == target for n in complete_nodes(given, target))
    ifaces = ("eth0", "cni0", "any") if is_node else ("eth0", "any")
    return [Item(f"{target}:{i}") for i in ifaces if i.startswith(iface)]


def complete_graph_sources(given: dict[str, Any], incomplete: str) -> list[Item]:
    """Files (the shell completes them) or a running lab."""
    return [Item(incomplete, type="file"), *complete_labs(given, incomplete)]


def complete_exercises(given: dict[str, Any], incomplete: str) -> list[Item]:
    """Exercise folders under topologies/ that have checks (or a path: the shell's)."""
    from labctl.exercise import catalog

    found = [Item(e.name, e.title or "exercise")
             for e in catalog.entries() if e.has_checks and e.name.startswith(incomplete)]
    return found or [Item(incomplete, type="dir")]


# (command path, parameter name) → completer; every `lab_name` option gets the labs.
COMPLETERS: dict[tuple[str, str], Completer] = {
    ("down", "lab"): complete_labs,
    ("exec", "target"): complete_targets,
    ("capture", "target"): complete_capture_targets,
    ("logs", "pod"): complete_pods,
    ("break", "name"): complete_pods,
    ("heal", "name"): complete_pods,
    ("rules", "node"): complete_nodes,
    ("trace", "source"): complete_targets,
    ("trace", "dest"): complete_pods,
    ("graph", "sources"): complete_graph_sources,
    ("check", "exercise"): complete_exercises,
}


# ------------------------------------------------------------------ the engine


def _values(path: str, name: str, kind: Any, given: dict[str, Any], incomplete: str
            ) -> list[Item]:
    """Candidates for one parameter's value."""
    fn = COMPLETERS.get((path, name)) or (complete_labs if name == "lab_name" else None)
    if fn is not None:
        return fn(given, incomplete)
    if isinstance(kind, Choice):
        return [Item(c) for c in kind.choices if c.startswith(incomplete)]
    if isinstance(kind, PathArg):
        return [Item(incomplete, type="file")]
    return []


def _option_for(cmd: Command, word: str) -> Option | None:
    flag = word.partition("=")[0]
    return next((p for p in cmd.params if isinstance(p, Option)
                 and (flag in p.flags or flag == p.negation)), None)


def candidates(root: Group, words: Sequence[str], incomplete: str) -> list[Item]:
    """What completing `incomplete` after `words` (the command line without `labctl`)
    offers."""
    cmd: Command = root
    path = ""
    rest = list(words)
    while isinstance(cmd, Group):
        name = next((w for w in rest if not w.startswith("-")), None)
        if name is None:
            return [Item(n, c.short_help) for n in cmd.names()
                    if n.startswith(incomplete) and (c := cmd.get(n)) is not None]
        sub = cmd.get(name)
        if sub is None:
            return []
        path = f"{path} {name}".strip()
        rest = rest[rest.index(name) + 1:]
        cmd = sub
    given: dict[str, Any] = {}
    positional = 0
    expecting: Option | None = None
    after_dashes = False
    for word in rest:
        if expecting is not None:
            given[expecting.dest] = word
            expecting = None
        elif word == "--":
            after_dashes = True
        elif word.startswith("-") and len(word) > 1 and not after_dashes:
            opt = _option_for(cmd, word)
            if opt is not None and opt.takes_value and "=" not in word:
                expecting = opt
            elif opt is not None and "=" in word:
                given[opt.dest] = word.partition("=")[2]
        else:
            positional += 1
    if expecting is not None:
        return _values(path, expecting.dest, expecting.type, given, incomplete)
    if incomplete.startswith("-") and not after_dashes:
        flags = [f for p in cmd.params if isinstance(p, Option)
                 for f in [*p.flags, *([p.negation] if p.negation else [])]]
        return [Item(f) for f in [*flags, "--help"] if f.startswith(incomplete)]
    for arg in (p for p in cmd.params if isinstance(p, Argument)):
        if arg.nargs == -1 or positional == 0:
            return [] if after_dashes and arg.rest else _values(
                path, arg.name, arg.type, given, incomplete)
        positional -= 1
    return []


def respond(root: Group, args: Sequence[str]) -> str:
    """The answer to `labctl __complete WORD... INCOMPLETE`, one candidate per line."""
    if not args:
        return ""
    found = candidates(root, args[:-1], args[-1])
    return "".join(f"{i.type}\t{i.value}\t{' '.join(i.help.split())}\n" for i in found)


# ------------------------------------------------------------------ the scripts

BASH = r"""# labctl completion for bash: source <(labctl completion bash)
_labctl_completion() {
    local kind value help
    COMPREPLY=()
    while IFS=$'\t' read -r kind value help; do
        case $kind in
            file) compopt -o default 2>/dev/null; COMPREPLY=(); return 0 ;;
            dir) compopt -o dirnames 2>/dev/null; COMPREPLY=(); return 0 ;;
            *) COMPREPLY+=("$value") ;;
        esac
    done < <(labctl __complete "${COMP_WORDS[@]:1:COMP_CWORD}" 2>/dev/null)
    return 0
}
complete -o nosort -F _labctl_completion labctl
"""

ZSH = r"""#compdef labctl
# labctl completion for zsh: labctl completion zsh > "${fpath[1]}/_labctl"
_labctl() {
    local -a described plain
    local line kind value help
    for line in "${(@f)$(labctl __complete "${(@)words[2,$CURRENT]}" 2>/dev/null)}"; do
        [[ -z $line ]] && continue
        kind=${line%%$'\t'*}; line=${line#*$'\t'}
        value=${line%%$'\t'*}; help=${line#*$'\t'}
        case $kind in
            file) _files; return ;;
            dir) _files -/; return ;;
            *) if [[ -n $help ]]; then described+=("${value//:/\\:}:$help")
               else plain+=("$value"); fi ;;
        esac
    done
    (( ${#described} )) && _describe -V labctl described
    (( ${#plain} )) && compadd -U -V labctl -a plain
    return 0
}
if [[ $zsh_eval_context[-1] == loadautofunc ]]; then
    _labctl "$@"
else
    compdef _labctl labctl
fi
"""

FISH = r"""# labctl completion for fish:
#   labctl completion fish > ~/.config/fish/completions/labctl.fish
function __labctl_complete
    set -l words (commandline -opc)[2..-1] (commandline -ct)
    for line in (labctl __complete $words 2>/dev/null)
        set -l field (string split \t -- $line)
        switch $field[1]
            case file
                __fish_complete_path (commandline -ct)
            case dir
                __fish_complete_directories (commandline -ct)
            case '*'
                printf '%s\t%s\n' $field[2] $field[3]
        end
    end
end
complete --no-files --command labctl --arguments '(__labctl_complete)'
"""

SCRIPTS = {"bash": BASH, "zsh": ZSH, "fish": FISH}


@command(short_help="Print the shell completion script (bash, zsh, fish).")
@argument("shell", type=Choice(SHELLS))
def completion(shell: str) -> None:
    """Print the shell completion script for SHELL (commands, options, and the names of
    running labs, their pods and nodes).

    \b
    Examples:
      source <(labctl completion bash)                      # add to ~/.bashrc
      labctl completion zsh > "${fpath[1]}/_labctl"         # then restart zsh
      labctl completion fish > ~/.config/fish/completions/labctl.fish
    """
    print(SCRIPTS[shell], end="")
