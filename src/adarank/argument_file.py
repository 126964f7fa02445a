"""Argument files: a run's flags as a JSON or YAML mapping (``python src/glue-cola.py args.yaml``)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from adarank.errors import UsageError, first_line


def is_argument_file(argument: str) -> bool:
    """Whether a command line's one argument names an argument file (its suffix, in any case)."""
    return argument.lower().endswith((".json", ".yaml", ".yml"))


class _Twice(Exception):
    """A key set twice in one mapping (its name is the message)."""


def _once(pairs: list[tuple]) -> dict:
    keys = [key for key, _ in pairs]
    for key in keys:
        if keys.count(key) > 1:
            raise _Twice(key)
    return dict(pairs)


class _OnceLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a mapping that sets a key twice."""

    def construct_mapping(self, node, deep=False):
        self.flatten_mapping(node)
        _once([(self.construct_object(key, deep=deep), None) for key, _ in node.value])
        return super().construct_mapping(node, deep=deep)


def read_argument_file(path: Path) -> dict:
    """The flags of a JSON or YAML argument file, a mapping; a key written twice is refused (the parsers
    would keep the last silently)."""
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() == ".json":
            document = json.loads(text, object_pairs_hook=_once)
        else:
            document = yaml.load(text, _OnceLoader)  # safe: SafeLoader's constructors only
    except FileNotFoundError:
        raise UsageError(f"argument file {path} does not exist: give the path of a JSON or YAML file") from None
    except IsADirectoryError:
        raise UsageError(f"argument file {path} is a directory: give the path of a JSON or YAML file") from None
    except UnicodeDecodeError as error:
        raise UsageError(f"argument file {path} is not UTF-8 text (byte {error.start}): save it as UTF-8") from None
    except OSError as error:
        raise UsageError(f"argument file {path} cannot be read ({error.strerror}): give a readable JSON or YAML "
                         "file") from None
    except _Twice as twice:
        raise UsageError(f"argument file {path} sets {twice} twice: keep one") from None
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise UsageError(f"argument file {path} is not valid {path.suffix[1:].upper()}: {first_line(error)}") from None
    if not isinstance(document, dict):
        raise UsageError(f"argument file {path} must hold a mapping of flag names to values")
    return document
