"""The keys a command's config defines, read from the YAML files in configs/ (train.yaml for vae-train,
eval.yaml for vae-eval, and the groups their defaults lists choose from), for the error line of a mistyped
key or option: the key it most likely meant, or the option of a config group that defines it."""
import difflib
import functools
import re
from importlib.resources import files

from omegaconf import DictConfig, OmegaConf

PACKAGE = "vae_cli.configs"
NOT_KEYS = ("defaults", "hydra")  # Hydra's own lists and settings, not keys of the run's config
# Where a data set's files are: resume=RUN data.root=NEW reads them from a new place (a data set moved, a run
# folder copied to another machine), the user vouching that they are the same data, and vae-eval RUN
# data.root=NEW the same. Anywhere else a changed path is another run's (another folder's tiny/ may hold
# other data): vae-cli checks paths, not images.
MOVABLE = ("data.root", "data.path")
# primary config -> (the command, how it lists its keys)
COMMANDS = {"train": ("vae-train", "`vae-train --cfg job` prints them all"),
            "eval": ("vae-eval", "`vae-eval --help` prints them all")}


def _dotted(node: DictConfig, prefix: str):
    for key, value in node.items_ex(resolve=False):
        if prefix or key not in NOT_KEYS:
            yield f"{prefix}{key}"
            if isinstance(value, DictConfig):
                yield from _dotted(value, f"{prefix}{key}.")


def config_groups(primary: str = "train") -> set[str]:
    """The config groups (configs/<group>/) the primary config's defaults list chooses from (group=option)."""
    defaults = OmegaConf.create((files(PACKAGE) / f"{primary}.yaml").read_text()).get("defaults", [])
    return {next(iter(entry)) for entry in defaults
            if isinstance(entry, DictConfig) and not next(iter(entry)).startswith(("override", "hydra"))}


@functools.cache
def known_keys(primary: str = "train") -> dict[str, set[str]]:
    """{dotted key: where it is defined: "<primary>.yaml" or the options "group=option" that define it}."""
    root, here = files(PACKAGE), f"{primary}.yaml"
    keys = {key: {here} for key in _dotted(OmegaConf.create((root / here).read_text()), "")}
    for group in sorted(config_groups(primary)):
        for option in sorted(p for p in (root / group).iterdir() if p.name.endswith(".yaml")):
            text = option.read_text()
            node = OmegaConf.create(text) or OmegaConf.create({})
            prefix = "" if "@package _global_" in text else f"{group}."
            if prefix:
                keys.setdefault(group, set()).add(here)  # its defaults list chooses an option
            for key in _dotted(node, prefix):
                keys.setdefault(key, set()).add(f"{group}={option.name[:-len('.yaml')]}")
    return keys


def unknown_key_line(key: str, override: str, primary: str = "train") -> str:
    """The error line for an override of a key that the composed config does not have."""
    keys, (command, listing) = known_keys(primary), COMMANDS[primary]
    if key in keys and f"{primary}.yaml" not in keys[key]:  # an option of a group defines it, not the chosen one
        options = sorted(keys[key])
        choose = options[0] if len(options) == 1 else f"one of {', '.join(options)}"
        return f"{override}: {key} is a key of {' and '.join(options)} only; choose {choose} as well"
    last = key.rsplit(".", 1)[-1]  # lr for optimizer.lr: the keys that end the same way, then near spellings
    close = sorted(k for k in keys if k.rsplit(".", 1)[-1] == last and k != key)[:3]
    close = close or difflib.get_close_matches(key, list(keys), n=1, cutoff=0.7)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    return f"{override}: {command}'s config has no key {key}{hint} ({listing})"


def check_added_keys(args: list[str], primary: str = "train") -> str | None:
    """The error line for a `+key=value` or `++key=value` adding a key that no config defines (the command
    would read nothing from it and run as if it was not there), else None. Adding a config group
    (+experiment=...) and Hydra's own keys (hydra.*) are left to Hydra."""
    added = [arg for arg in args if arg.startswith("+")]
    if not added:
        return None
    groups, keys = config_groups(primary), known_keys(primary)
    for arg in added:
        found = re.fullmatch(r"\+\+?([\w.]+)(@[\w.]+)?=.*", arg)
        if found is None:
            continue
        key = found.group(1)
        if key not in keys and key not in groups and key.split(".")[0] != "hydra":
            return unknown_key_line(key, arg, primary)
    return None


def single_values(args: list[str], wanted):
    """(arg, key, value) for each `key=value` of args whose key wanted(key) is true and that Hydra parses
    into one value (not a sweep; Hydra's own error names an override it cannot parse)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    for arg in args:
        key = arg.partition("=")[0].lstrip("+").split("@")[0]
        if arg.startswith(("-", "~")) or not wanted(key):
            continue
        try:
            override = parser.parse_override(arg)
        except HydraException:
            continue
        if not override.is_sweep_override():
            yield arg, key, override.value()


def settings_node_line(args: list[str], primary: str = "train") -> str | None:
    """The error line for `node=value` replacing a node of settings by one value (objective=val/elbo,
    checkpoint=5): Hydra takes it, and the code met the value with an AttributeError traceback. A dict
    (objective={metric:val/kl}) is Hydra's merge into the node, and a sweep is left to the sweep's checks."""
    tree = OmegaConf.create((files(PACKAGE) / f"{primary}.yaml").read_text())
    nodes = {key: node for key, node in tree.items() if key not in NOT_KEYS and isinstance(node, DictConfig) and node}
    for arg, key, value in single_values(args, nodes.__contains__):
        if isinstance(value, dict):
            continue
        name, default = next(iter(nodes[key].items_ex(resolve=False)))
        keys = [f"{key}.{k}" for k in nodes[key]]
        if len(keys) > 1 or (type(value) is not type(default) and (default is not None or value is None)):
            value = "null" if default is None else default  # the form, not a value the setting would refuse
        which = f"one setting, {keys[0]}; set it" if len(keys) == 1 else \
            f"settings ({', '.join(keys)}); set one of them"
        return f"{arg}: {key} is not one value but a group of {which}, e.g. {key}.{name}={value}"
    return None


def group_choice_line(args: list[str], primary: str = "train", removable: tuple[str, ...] = ()) -> str | None:
    """The error line for a config group given something other than one option's name (model=[1,2], eval=123,
    experiment=null): Hydra's TypeError or ValueError named neither the group nor its options. removable: the
    groups whose `~group` the command takes."""
    defaults = {next(iter(entry)): next(iter(entry.values()))
                for entry in OmegaConf.create((files(PACKAGE) / f"{primary}.yaml").read_text()).get("defaults", [])
                if isinstance(entry, DictConfig) and not next(iter(entry)).startswith(("override", "hydra"))}
    for arg, key, value in single_values(args, defaults.__contains__):
        if isinstance(value, str) or (isinstance(value, list) and value and all(isinstance(v, str) for v in value)):
            continue  # one option, or several (Hydra's list of options: experiment=[a,b])
        if value is None and defaults[key] is None:
            return f"{arg}: {key} is unset unless given (Hydra takes no null for a config group); leave {arg} out"
        if value is None and key in removable:
            return f"{arg}: write ~{key} (Hydra takes no null for a config group)"
        options = sorted(p.name[:-len(".yaml")] for p in (files(PACKAGE) / key).iterdir() if p.name.endswith(".yaml"))
        return (f"{arg}: {key} takes the name of one of its options (such as {', '.join(options)}), "
                f"e.g. {key}={options[0]}")
    return None


def unparsable_override(args: list[str]) -> str | None:
    """The first of args that Hydra's override grammar rejects (its error does not say which), else None."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    for arg in args:
        if arg.startswith("-"):  # -m, --cfg job and the like are Hydra's flags, not overrides
            continue
        try:
            parser.parse_override(arg)
        except HydraException:
            return arg
    return None


def deleted_key(args: list[str], allowed: tuple[str, ...]) -> str | None:
    """The error line for `~key` (Hydra's deletion) of a key the command needs, else None: the code reads
    every key it does not name in allowed, and met the missing one with a traceback."""
    for arg in args:
        if not arg.startswith("~"):
            continue
        key = arg[1:].partition("=")[0]
        if key not in allowed and key.split(".")[0] != "hydra":
            kept = f"; only {', '.join(f'~{name}' for name in allowed)} may be removed" if allowed else ""
            return f"{arg}: this command needs {key}; give it a value instead (null where the setting allows it){kept}"
    return None


def swept_objective(args: list[str]) -> str | None:
    """The error line for a multirun that sweeps objective.* (its jobs would be ranked by different
    figures, or in different directions, in one table), else None."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    for arg in args:
        key = arg.partition("=")[0].lstrip("+~").removeprefix("hydra.sweeper.params.")
        if arg.startswith("-") or not (key == "objective" or key.startswith("objective.")):
            continue
        try:
            swept = parser.parse_override(arg.replace("hydra.sweeper.params.", "", 1)).is_sweep_override()
        except HydraException:
            continue  # Hydra's own error names it
        if swept:
            return (f"{arg}: a sweep ranks its jobs by one objective; give {key} one value (it is the figure "
                    "the sweep compares, not a setting to sweep), and sweep the settings that train the jobs")
    return None


def hydra_error_line(message: str, primary: str = "train", args: list[str] = ()) -> str:
    """Hydra's error about an override, in one line, made actionable: an unknown key named with its likely
    meaning (not Hydra's advice to add it with +, which the command would ignore), a missing option
    with the group's options, without Hydra's search path, and a syntax error with the override (args:
    the command line's) that has it."""
    message = "; ".join(line.strip() for line in message.splitlines() if line.strip())
    if "Unable to configure handler 'file'" in message:  # Hydra's log file in the run folder
        return ("the run folder cannot be written: Hydra could not open its log file there (a read-only folder or "
                "a full disk?); make it writable, or choose another hydra.run.dir (a sweep: hydra.sweep.dir)")
    if "override_grammar" in message and (bad := unparsable_override(args)):
        message = message if bad in message else f"{bad}: {message}"
        key, _, value = bad.partition("=")
        if "~" in value:  # the shell left it (it expands ~ only at a word's start) and Hydra refuses it
            return f"{bad}: Hydra's override grammar refuses ~ in a value; write {key}={value.replace('~', '$HOME')}"
        return message
    found = re.match(r"Could not override '([\w.]+)'\.; To append to your config use \+([^;]+)", message)
    if found:
        return unknown_key_line(found.group(1), found.group(2), primary)
    message = message.split("; Config search path:")[0]
    message = re.sub(r"Available options in '([\w/]+)':; (.*)",
                     lambda m: f"the options of {m.group(1)} are {m.group(2).replace('; ', ', ')}", message)
    return missing_option_line(message, primary)


def missing_option_line(message: str, primary: str) -> str:
    """Hydra's "In 'train': Could not find 'likelihood/gausian'; the options of likelihood are ..." for an
    option of the command line's, as the override with the likely meant option first; else as it is."""
    found = re.fullmatch(r"In '([\w/]+)': Could not find '([\w/]+)/([^'/]+)'; the options of \2 are (.*)", message)
    if not found or found.group(1) not in (primary, "hydra/config"):  # named in a config file: Hydra says which
        return message
    group, option, options = found.group(2), found.group(3), found.group(4)
    close = difflib.get_close_matches(option, options.split(", "), n=1)
    hint = f"; did you mean {group}={close[0]}?" if close else ""
    return f"{group}={option}: no option {option} in {group}{hint} (the options of {group} are {options})"
