"""
The reference in C{docs/} kept in step with the code, where that can be
checked mechanically:

  - every property of a delivery job that the parser reads, every key of
    the objects it reads, every C{state} and C{result} the code can put in
    a result entry and every key it writes into one appear in
    C{docs/messages.rst} (found in the source, wherever it is, so that
    moving a module does not break the check);
  - every attribute and method of the plugin interfaces, every helper of
    L{mqtwist.dataplugin.testing} and every name exported for plugin authors appear in
    C{docs/plugins.rst};
  - every C{--option} named in C{docs/} exists, and a default given as
    C{``--option`` (default ``X``)} is the option's default;
  - the minimal example plugin of C{docs/plugins.rst} passes its own tests;
  - the relative links between the documents lead to files that exist, and
    the files are valid reStructuredText (when docutils is installed).

A failure names what is missing: say it in the document (in double
backquotes, as the documents write names), or, when the code moved, point
the lookup below at its new place.
"""

from __future__ import annotations

import ast
import io
import re
import sys
import types
import unittest
from collections.abc import Iterator
from pathlib import Path
from textwrap import dedent

import pytest

TOP = Path(__file__).resolve().parent.parent
DOCS = TOP / "docs"
SOURCE = TOP / "mqtwist"
DOCUMENTS = ("README.rst", "messages.rst", "plugins.rst", "submission.rst")


def document(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def literals(text: str) -> set[str]:
    """
    The inline literals of reStructuredText C{text}: what is between double
    backquotes, with line breaks made spaces.
    """
    return {" ".join(found.split()) for found in re.findall(r"``(.+?)``", text, re.DOTALL)}


def mentioned(name: str, text: str) -> bool:
    """
    Whether C{text} names C{name} in a literal: as the whole literal
    (C{``mime``}), as a JSON key in one (C{``{"name", "type"}``}), or as a
    call (C{``setMime(body)``}).
    """
    return any(
        found == name or f'"{name}"' in found or found.startswith(f"{name}(")
        for found in literals(text)
    )


def missing(names: set[str], text: str) -> list[str]:
    return sorted(name for name in names if not mentioned(name, text))


# --- the source, as syntax trees -------------------------------------------


def _modules() -> dict[Path, ast.Module]:
    return {
        path: ast.parse(path.read_text(encoding="utf-8"), str(path))
        for path in sorted(SOURCE.rglob("*.py"))
    }


MODULES = _modules()


def _calledName(call: ast.Call) -> str:
    func = call.func
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return ""


def _string(node: ast.AST | None) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return None


def _arg(call: ast.Call, index: int) -> str | None:
    return _string(call.args[index]) if len(call.args) > index else None


def _walk() -> Iterator[tuple[ast.ClassDef | None, ast.AST]]:
    """
    Every node of the source, with the class it is in.
    """
    for tree in MODULES.values():
        stack: list[tuple[ast.ClassDef | None, ast.AST]] = [(None, tree)]
        while stack:
            owner, node = stack.pop()
            yield owner, node
            inner = node if isinstance(node, ast.ClassDef) else owner
            stack.extend((inner, child) for child in ast.iter_child_nodes(node))


def function(owner: str | None, name: str) -> ast.FunctionDef:
    """
    The function C{name} (a method of the class C{owner}, when given),
    wherever it is in the source.
    """
    found = [
        node
        for cls, node in _walk()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.name == name
        and (owner is None or (cls is not None and cls.name == owner))
    ]
    assert len(found) == 1, (
        f"{owner + '.' if owner else ''}{name} is {len(found)} times in mqtwist/, not once: "
        f"update tests/test_docs.py to where it is now"
    )
    return found[0]  # type: ignore[return-value]


def constant(name: str) -> tuple[str, ...]:
    """
    The strings of the module-level constant C{name} (a tuple of strings, or
    of names of string constants of its module).
    """
    for tree in MODULES.values():
        strings = {
            target.id: node.value
            for node in tree.body
            if isinstance(node, ast.Assign)
            for target in node.targets
            if isinstance(target, ast.Name)
        }
        if name in strings:
            value = strings[name]
            items = value.elts if isinstance(value, (ast.Tuple, ast.List)) else [value]
            # a name in the tuple is that of a string constant of the module
            resolved = [
                _string(strings.get(item.id)) if isinstance(item, ast.Name) else _string(item)
                for item in items
            ]
            assert all(resolved), f"{name} is not a tuple of strings any more: update tests/test_docs.py"
            return tuple(resolved)  # type: ignore[arg-type]
    raise AssertionError(f"no constant {name} in mqtwist/: update tests/test_docs.py")


def keysIn(node: ast.AST) -> set[str]:
    """
    The keys a function reads or writes: C{.get("k")}, C{x["k"]}, the keys
    of dict literals, the strings of set literals and those a C{for} loop
    runs over.
    """
    keys: set[str] = set()
    for each in ast.walk(node):
        if isinstance(each, ast.Call) and _calledName(each) == "get":
            keys.add(_arg(each, 0) or "")
        elif isinstance(each, ast.Subscript):
            keys.add(_string(each.slice) or "")
        elif isinstance(each, ast.Dict):
            keys.update(_string(key) or "" for key in each.keys)
        elif isinstance(each, ast.Set):
            keys.update(_string(item) or "" for item in each.elts)
        elif isinstance(each, ast.For) and isinstance(each.iter, ast.Tuple):
            keys.update(_string(item) or "" for item in each.iter.elts)
    return keys - {""}


# --- docs/messages.rst -------------------------------------------------------


def jobProperties() -> set[str]:
    """
    The properties of a job that the parser reads: C{obj["k"]},
    C{obj.get("k")}, C{"k" in obj} and C{_expect(obj, "k", ...)} in
    C{Message.fromObject}.
    """
    names: set[str] = set()
    for node in ast.walk(function("Message", "fromObject")):
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == "obj":
            names.add(_string(node.slice) or "")
        elif isinstance(node, ast.Call) and _calledName(node) == "get":
            if isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name) \
                    and node.func.value.id == "obj":
                names.add(_arg(node, 0) or "")
        elif isinstance(node, ast.Call) and _calledName(node) == "_expect":
            names.add(_arg(node, 1) or "")
        elif isinstance(node, ast.Compare) and isinstance(node.ops[0], (ast.In, ast.NotIn)):
            target = node.comparators[0]
            if isinstance(target, ast.Name) and target.id == "obj":
                names.add(_string(node.left) or "")
    return names - {""}


def test_jobProperties() -> None:
    properties = jobProperties()
    # the lookup itself still finds what the parser reads
    assert {"recipient", "envelope", "mime", "dkim", "queues"} <= properties
    assert missing(properties, document("messages.rst")) == []


def test_nestedKeys() -> None:
    """
    The keys of the objects in a job (and the values of its enumerations).
    """
    keys = set()
    for name in ("QUEUE_KINDS", "EDIT_KINDS", "MIME_KEYS", "_DKIM_KEYS", "DSN_NOTIFY", "DSN_RET", "POLICIES"):
        keys.update(constant(name))
    for owner, name in (("Smarthost", "fromJSON"), ("DSN", "fromJSON"), (None, "_attachment"),
                        (None, "_address")):
        keys.update(keysIn(function(owner, name)))
    assert {"hostname", "notify", "address", "data", "verified"} <= keys
    assert missing(keys, document("messages.rst")) == []


def statesAndResults() -> tuple[set[str], set[str]]:
    """
    The C{state} and C{result} values the code can give a result entry.
    """
    states: set[str] = set()
    results: set[str] = set()
    for owner, node in _walk():
        if not isinstance(node, ast.Call):
            continue
        called = _calledName(node)
        if called == "AttemptFailed" or (
            called == "__init__"
            and owner is not None
            and any(isinstance(base, ast.Name) and base.id == "AttemptFailed" for base in owner.bases)
        ):
            states.add(_arg(node, 0) or "")
            results.add(_arg(node, 1) or "")
        elif called == "failure" and isinstance(node.func, ast.Attribute) \
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "reply":
            states.add(_arg(node, 0) or "")
            results.add("error")
        elif called in ("_Command", "_issue", "_issueAddress"):
            states.add(_arg(node, 0) or "")
        elif called in ("ResultEntry", "ScheduledEntry"):
            states.add(_arg(node, 0) or "")
            results.add(_arg(node, 1) or "")
            for keyword in node.keywords:
                if keyword.arg == "state":
                    states.add(_string(keyword.value) or "")
                elif keyword.arg == "result":
                    results.add(_string(keyword.value) or "")
    return states - {""}, results - {""}


def test_statesAndResults() -> None:
    states, results = statesAndResults()
    assert {"process", "dns", "connect", "rcptto", "message"} <= states
    assert {"accepted", "error", "timeout", "lost", "invalid", "deferred"} <= results
    text = document("messages.rst")
    assert missing(states, text) == []
    assert missing(results, text) == []


def test_resultKeys() -> None:
    """
    The keys of result entries and of the results made without a message.
    """
    keys: set[str] = set()
    for owner, name in (
        ("ResultEntry", "toJSON"),
        (None, "connectionFacts"),
        ("ClientTLS", "facts"),
        ("Backoff", "entryFields"),
        ("DeliveryEngine", "_deferred"),
        ("OutboxProcessor", "_defer"),
        (None, "rawResultJSON"),
        ("OutboxProcessor", "_deadLetter"),
    ):
        keys.update(keysIn(function(owner, name)))
    assert {"time", "mta", "sent", "cipher", "until", "deferrals", "inputsize"} <= keys
    assert missing(keys, document("messages.rst")) == []


def test_backoffActions() -> None:
    actions = {
        _arg(node, 1)
        for _, node in _walk()
        if isinstance(node, ast.Call) and _calledName(node) in ("Backoff", "_pause")
    } - {None}
    assert {"pause", "down"} <= actions
    assert missing(actions, document("messages.rst")) == []  # type: ignore[arg-type]


# --- docs/plugins.rst --------------------------------------------------------


def test_pluginInterfaces() -> None:
    from mqtwist import interfaces

    text = document("plugins.rst")
    for interface in (interfaces.IDataPlugin, interfaces.IPluginContext,
                      interfaces.IConnectionInfo, interfaces.IPluginMessage):
        assert mentioned(interface.__name__, text), interface.__name__
        assert missing(set(interface.names(all=True)), text) == [], interface.__name__
    assert missing({member.name for member in interfaces.Control}, text) == []


def test_pluginAuthorsNames() -> None:
    import mqtwist
    import mqtwist.dataplugin.testing

    text = document("plugins.rst")
    assert missing(set(mqtwist.dataplugin.testing.__all__), text) == []
    assert missing(set(mqtwist.__all__) - {"__version__"}, text) == []


def _codeBlock(text: str, firstLine: str) -> str:
    """
    The Python code block of C{text} whose first line is C{firstLine}.
    """
    for block in re.findall(r"\.\. code-block:: python\n\n((?:    .*\n|\n)+)", text):
        code = dedent(block)
        if code.startswith(firstLine + "\n"):
            return code
    raise AssertionError(f"no code block starting with {firstLine!r}")


def test_examplePlugin(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    The minimal complete example of C{docs/plugins.rst} is a plugin, and
    passes the tests printed after it.
    """
    text = document("plugins.rst")
    module = types.ModuleType("mqtwist.plugins.campaign_header")
    exec(compile(_codeBlock(text, "# mqtwist/plugins/campaign_header.py"),
                 "docs/plugins.rst (campaign_header.py)", "exec"), module.__dict__)
    monkeypatch.setitem(sys.modules, module.__name__, module)

    namespace: dict[str, object] = {"__name__": "docs_plugins_example"}
    exec(compile(_codeBlock(text, "# tests/test_campaign_header.py"),
                 "docs/plugins.rst (test_campaign_header.py)", "exec"), namespace)
    cases = [value for value in namespace.values()
             if isinstance(value, type) and issubclass(value, unittest.TestCase)
             and value.__module__ == namespace["__name__"]]
    assert cases
    suite = unittest.TestSuite(unittest.defaultTestLoader.loadTestsFromTestCase(case) for case in cases)
    output = io.StringIO()
    outcome = unittest.TextTestRunner(stream=output, verbosity=2).run(suite)
    assert outcome.testsRun >= 3
    assert outcome.wasSuccessful(), output.getvalue()


# --- every document ---------------------------------------------------------


def test_optionsExist() -> None:
    """
    Every C{--option} the documents name is one of C{twistd mqtwist}'s, and
    the defaults they give are the options' defaults.
    """
    from mqtwist.config.sources import SETTINGS
    from mqtwist.tap import Options

    options = Options({})
    known = {parameter[0] for parameter in options.optParameters}
    known |= {flag[0] for flag in options.optFlags}
    defaults = {setting.option: setting.default for setting in SETTINGS}
    for name in DOCUMENTS:
        text = document(name)
        for option in re.findall(r"``--([a-z0-9*-]+)", text):
            if option.endswith("*"):
                assert any(each.startswith(option[:-1]) for each in known), (name, option)
            else:
                assert option in known, f"{name} names --{option}, which twistd mqtwist does not have"
        for option, default in re.findall(r"``--([a-z0-9-]+)``\s+\(default\s+``([^`]*)``\)", text):
            assert defaults.get(option) == default, (
                f"{name} says --{option} defaults to {default!r}; it is {defaults.get(option)!r}"
            )


@pytest.mark.parametrize("path", [DOCS / name for name in DOCUMENTS] + [TOP / "README.rst"],
                         ids=lambda path: str(path.relative_to(TOP)))
def test_linksLeadSomewhere(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    targets = re.findall(r"<([\w./-]+\.rst)>`__?", text)
    assert [target for target in targets if not (path.parent / target).is_file()] == []


@pytest.mark.parametrize("path", [DOCS / name for name in DOCUMENTS] + [TOP / "README.rst"],
                         ids=lambda path: str(path.relative_to(TOP)))
def test_validRestructuredText(path: Path) -> None:
    """
    The documents parse without a warning; README.rst (the package's long
    description, partly generated from the settings) without an error.
    """
    pytest.importorskip(
        "docutils", reason="docutils is not installed: the reStructuredText of the documents is not checked"
    )
    import docutils.core

    messages = io.StringIO()
    docutils.core.publish_doctree(
        path.read_text(encoding="utf-8"),
        source_path=str(path),
        settings_overrides={
            # warnings for docs/, errors for README.rst
            "report_level": 2 if path.parent == DOCS else 3,
            "halt_level": 5,
            "warning_stream": messages,
            # no Pygments needed
            "syntax_highlight": "none",
        },
    )
    assert messages.getvalue() == ""
