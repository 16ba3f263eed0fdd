"""Reading YAML the user wrote: mappings that remember their line numbers, in bounded time and memory.

Config errors name ``file:line``, so every mapping keeps the line of itself and of each key. YAML's
anchors and aliases share one node, so a few hundred bytes of aliases to aliases can stand for
billions of values (a "billion laughs" file): constructing it is cheap, but anything that walks or
prints the result is not. ``load_yaml`` therefore measures the expanded size on the node graph,
each shared node once, and refuses a document past ``MAX_NODES`` values, or one whose alias refers
to its own container, before any value is built. Keys must be plain scalars.
"""

from __future__ import annotations

from typing import Any

import yaml

from asyncddp.errors import ConfigError
__all__ = ["Map", "MAX_NODES", "load_yaml"]

# Values in one document, aliases expanded: a config listing thousands of hosts has a few 10^4.
MAX_NODES = 1_000_000


class Map(dict):
    """A YAML mapping that remembers the line of itself and of each key, and each scalar value's
    text as written (``texts``: ``true``, ``010``, ``1.50``; None for a list or mapping)."""

    line: int = 0
    key_lines: dict
    texts: dict


class _Loader(yaml.SafeLoader):
    pass


def _construct_map(loader: _Loader, node: yaml.MappingNode) -> Map:
    result = Map()
    result.line = node.start_mark.line + 1
    result.key_lines = {}
    result.texts = {}
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            # A list as a key cannot be hashed, and no key of a config is ever one.
            raise yaml.constructor.ConstructorError(None, None, "a key must be plain text, not a list or mapping",
                                                    key_node.start_mark)
        key = loader.construct_object(key_node, deep=True)
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = key_node.start_mark.line + 1
        result.texts[key] = value_node.value if isinstance(value_node, yaml.ScalarNode) else None
    return result


def _construct_int(loader: _Loader, node: yaml.ScalarNode) -> int:
    # Python refuses to convert integers of more than 4300 digits, with a ValueError and no line.
    if len(node.value) > 32:
        raise yaml.constructor.ConstructorError(None, None, "a number of more than 32 digits", node.start_mark)
    return loader.construct_yaml_int(node)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_map)
_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_expansion(root: yaml.Node, source: str) -> None:
    """Refuse past ``MAX_NODES`` expanded values or a self-referring alias; time linear in the text."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()  # on the current path: meeting one again means a cycle
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        line = node.start_mark.line + 1
        if children_done:
            open_nodes.discard(id(node))
            sizes[id(node)] = 1 + sum(sizes[id(child)] for child in _children(node))
            if sizes[id(node)] > MAX_NODES:
                raise ConfigError(f"{source}:{line}: this value expands through its aliases (*name) to more "
                                  f"than {MAX_NODES} values; no cluster config needs that many, write it out")
            continue
        if id(node) in open_nodes:
            raise ConfigError(f"{source}:{line}: an alias refers to the list or mapping that contains it; "
                              "write the values out")
        open_nodes.add(id(node))
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in sizes)


def load_yaml(text: str, source: str) -> Any:
    """The document in ``text`` with ``Map`` for mappings; ``ConfigError`` naming ``source`` on any problem."""
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        _check_expansion(root, source)
        return loader.construct_document(root)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"{source}{line}: not valid YAML ({problem[:200]}); fix the syntax") from None
    except RecursionError:
        # PyYAML's parser recurses once per nesting level.
        raise ConfigError(f"{source}: lists or mappings nested too deeply to read; flatten the file") from None
    finally:
        loader.dispose()
