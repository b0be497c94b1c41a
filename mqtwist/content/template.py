"""
MailerQ's personalization templates: C{{$name}}, C{{$a.b}} and modifiers
(C{{$name|tolower|ucfirst}}, C{{$name|default:"friend"}}) replaced by the
values of a job's C{data}.

What is supported, and what happens to the rest (the README says the same):

  - a variable is C{{$} and a path of names joined by dots (C{{$a.b.c}});
    a number in the path indexes a list (C{{$children.0}});
  - a value is written as JSON writes it (C{33}, C{1.5}, C{true}); a
    string as it is; a list or object as compact JSON; C{null} or a
    missing variable as nothing (unless C{default} gives something);
  - modifiers follow C{|}, their arguments C{:}, each a double- or
    single-quoted string, a number, C{true}/C{false} or another variable
    (C{$path}); every modifier of MailerQ's table is implemented (see
    L{MODIFIERS}); a modifier name that is not in the table has no effect,
    as MailerQ documents;
  - C{{if COND}} ... C{{elseif COND}} ... C{{else}} ... C{{/if}}, where
    COND compares variables (with modifiers), strings, numbers, C{true},
    C{false} and C{null} (C{==}, C{!=}, C{<}, C{>}, C{<=}, C{>=}), negates
    (C{!}, C{not}) and joins (C{and}/C{&&}, C{or}/C{||}); a value is
    false when it is missing, C{null}, C{false}, 0, C{""}, C{"0"} or
    empty, as in PHP;
  - C{{foreach $list as $item}} or C{{foreach $list as $key => $item}}
    ... C{{foreachelse}} ... C{{/foreach}} over a list or an object;
  - anything else between braces (other tags, a block that is not closed
    or whose test cannot be read, a variable with a malformed modifier or
    argument, CSS rules) is left exactly as written;
  - in an HTML part every value is HTML-escaped when it is written,
    unless a modifier already made it HTML (C{escape}, C{escape:"html"},
    C{nl2br}, which escapes its input first there).

The work a template makes is bounded (L{TemplateLimits}), since its cost
does not follow its size (three nested loops over 200 items write 8
million times): the characters written, the C{{foreach}} iterations, the
depth of nested blocks and the time of C{regex_replace}, whose patterns
run with a timeout (the C{regex} module's: Python's C{re} cannot stop a
pattern that backtracks for ever).  Past one, L{TemplateTooCostly}.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import html
import json
import re
import time
import urllib.parse
from collections import ChainMap
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import regex

__all__ = [
    "DEFAULT_LIMITS",
    "MODIFIERS",
    "Budget",
    "TemplateLimits",
    "TemplateTooCostly",
    "UnsafeValue",
    "hasTemplate",
    "render",
]


class UnsafeValue(ValueError):
    """
    A variable's value cannot be written where it goes (a line break or
    another control character in a header field).

    @ivar variable: the variable's path as written (C{name}, C{a.b}).
    """

    def __init__(self, variable: str, why: str) -> None:
        super().__init__(f"variable {variable!r} {why}")
        self.variable = variable


class TemplateTooCostly(Exception):
    """
    A template would do more work than L{TemplateLimits} lets it (not a
    C{ValueError}: a modifier that raises one merely has no effect).

    @ivar limit: the setting that bounds it (C{max-job-bytes}, ...).
    """

    def __init__(self, limit: str, why: str) -> None:
        super().__init__(f"{why} (limit --{limit})")
        self.limit = limit


@dataclass(frozen=True)
class TemplateLimits:
    """
    The work the templates of one message may make.

    @ivar output: characters all the rendered text may have (the job's
        size limit: a message bigger than a job may be is not sent).
    @ivar loops: C{{foreach}} iterations in all.
    @ivar depth: C{{if}} and C{{foreach}} blocks within one another.
    @ivar regexSeconds: seconds all C{regex_replace} modifiers may take.
    """

    output: int = 64 * 1024 * 1024
    loops: int = 10_000
    depth: int = 100
    regexSeconds: float = 1.0


#: the limits of the settings' defaults
DEFAULT_LIMITS = TemplateLimits()


class Budget:
    """
    What is left of L{TemplateLimits} while one message is rendered (its
    fields and parts share it).
    """

    def __init__(self, limits: TemplateLimits) -> None:
        self.limits = limits
        self.output = limits.output
        self.loops = limits.loops
        self.regexSeconds = limits.regexSeconds

    def write(self, characters: int) -> None:
        """
        Count C{characters} more of output.

        @raise TemplateTooCostly: past the limit.
        """
        self.output -= characters
        if self.output < 0:
            raise TemplateTooCostly(
                "max-job-bytes", f"the personalized message would have more than {self.limits.output} characters"
            )

    def loop(self) -> None:
        """
        Count one more C{{foreach}} iteration.

        @raise TemplateTooCostly: past the limit.
        """
        self.loops -= 1
        if self.loops < 0:
            raise TemplateTooCostly(
                "template-loops", f"the {{foreach}} blocks would run more than {self.limits.loops} times"
            )


class _Missing:
    """
    The value of a variable that C{data} does not have.
    """

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


class _HTML(str):
    """
    A string that is HTML already: it is not escaped again in HTML parts.
    """


_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_PATH = rf"{_NAME}(?:\.[A-Za-z0-9_]+)*"
#: a bare argument stops at a brace, so that a variable left open does not
#: make every later one scan to the end of the text (quadratic time)
_ARGUMENT = r""""(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|[^|:{}"'\s]+"""
_MODIFIER = rf"\|{_NAME}(?::(?:{_ARGUMENT}))*"
_VARIABLE = re.compile(rf"\{{\$(?P<path>{_PATH})(?P<modifiers>(?:{_MODIFIER})*)\}}")
_ONE_MODIFIER = re.compile(rf"\|(?P<name>{_NAME})(?P<arguments>(?::(?:{_ARGUMENT}))*)")
_ONE_ARGUMENT = re.compile(rf":({_ARGUMENT})")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?\Z")
#: only quotes and backslashes are escaped: a regex_replace pattern keeps its \d
_QUOTED_ESCAPE = re.compile(r"""\\([\\"'])""")
#: characters a header field value must not receive from a variable
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


#: what a variable or a block tag begins with
_TEMPLATE = re.compile(r"\{(?:\$|if\s|foreach\s)")


def hasTemplate(text: str) -> bool:
    """
    Whether C{text} may hold a variable or a block (a cheap test before
    L{render}).
    """
    return _TEMPLATE.search(text) is not None


def render(
    text: str,
    variables: Mapping[str, Any],
    *,
    html: bool = False,
    header: bool = False,
    newline: str = "\n",
    budget: Budget | None = None,
) -> str:
    """
    C{text} with every variable replaced by its value.

    @param variables: the values by name (a job's C{data}, with
        C{recipient} and C{envelope}).
    @param html: whether C{text} is HTML: values are HTML-escaped.
    @param header: whether C{text} is a header field value: a value with
        a line break or another control character is refused.
    @param newline: what line breaks in values become (the text's own).
    @param budget: what is left of the work the message's templates may
        make (by default, L{DEFAULT_LIMITS} for this text alone).
    @raise UnsafeValue: for such a value in a header field.
    @raise TemplateTooCostly: past one of the limits of C{budget}.
    """
    spent = Budget(DEFAULT_LIMITS) if budget is None else budget

    def substitute(text: str, scope: Mapping[str, Any]) -> str:
        def replace(match: re.Match[str]) -> str:
            path, modifiers = match.group("path", "modifiers")
            written = _written(_evaluate(path, modifiers, scope, html, spent))
            spent.write(len(written))
            if header and _CONTROL.search(written):
                raise UnsafeValue(path, "would put a line break or a control character in a header field")
            if html and not isinstance(written, _HTML):
                written = _escape(written)
            if "\n" in written or "\r" in written:
                written = _LINE_BREAK.sub(newline, written)
            return written

        return _VARIABLE.sub(replace, text)

    if "{if" in text or "{foreach" in text:
        return _renderBlocks(_parseBlocks(text, spent), variables, substitute, spent)
    return substitute(text, variables)


def _evaluate(path: str, modifiers: str, variables: Mapping[str, Any], html: bool, budget: Budget) -> Any:
    """
    The value of a variable after its modifiers.

    @raise TemplateTooCostly: a modifier would write more than C{budget}
        has left, or C{regex_replace} takes longer.
    """
    value = _lookup(variables, path)
    for function, arguments, growth in _chain(modifiers) if modifiers else ():
        values = [variable(variables) if callable(variable) else variable for variable in arguments]
        try:
            if growth is not None and not _isList(value):
                # a count or a text that multiplies the value: refused before it is made
                length = growth(_written(value), *values)
                if length > budget.output:
                    budget.write(length)
            if function is _regexReplace:
                value = _timedRegexReplace(value, values, budget)
            else:
                value = function(value, values, html)
        except (TypeError, ValueError, OverflowError, re.error, regex.error):
            # an argument of the wrong kind: the modifier has no effect
            continue
        if isinstance(value, str) and len(value) > budget.output:
            budget.write(len(value))
    return value


def _timedRegexReplace(value: Any, arguments: list[Any], budget: Budget) -> Any:
    """
    C{regex_replace} within the time C{budget} has left.
    """
    tooLong = TemplateTooCostly(
        "template-regex-seconds", f"regex_replace patterns would take more than {budget.limits.regexSeconds} seconds"
    )
    if budget.regexSeconds <= 0:
        raise tooLong
    started = time.monotonic()
    try:
        return _regexReplace(value, arguments, False, timeout=budget.regexSeconds)
    except TimeoutError:
        raise tooLong from None
    finally:
        budget.regexSeconds -= time.monotonic() - started


# -- {if} and {foreach} blocks ----------------------------------------------------

_BLOCK_TAG = re.compile(r"\{(?P<name>if|elseif|else|/if|foreach|foreachelse|/foreach)(?P<rest>\s[^{}]*)?\}")
_FOREACH = re.compile(
    rf"\$(?P<path>{_PATH})(?P<modifiers>(?:{_MODIFIER})*)\s+as\s+\$(?P<first>{_NAME})"
    rf"(?:\s*=>\s*\$(?P<second>{_NAME}))?\Z"
)
_CONDITION_TOKEN = re.compile(
    rf"""\s*(?:(?P<variable>\$(?P<path>{_PATH})(?P<modifiers>(?:{_MODIFIER})*))"""
    rf"""|(?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')|(?P<number>-?\d+(?:\.\d+)?)(?![\w.])"""
    r"""|(?P<operator>==|!=|<=|>=|<|>|&&|\|\||!)|(?P<word>[A-Za-z]+)\b)"""
)
_COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<": lambda a, b: a < b,
    ">": lambda a, b: a > b,
    "<=": lambda a, b: a <= b,
    ">=": lambda a, b: a >= b,
}
_LITERALS = {"true": True, "false": False, "null": None}

Condition = Callable[[Mapping[str, Any]], Any]


@dataclass
class _If:
    """
    C{{if}} ... C{{elseif}} ... C{{else}} ... C{{/if}}.
    """

    branches: list[tuple[Condition, list[Any]]]
    otherwise: list[Any] | None = None


@dataclass
class _Foreach:
    """
    C{{foreach $list as $item}} (or C{$key => $item}) ... C{{foreachelse}}
    ... C{{/foreach}}.
    """

    source: tuple[str, str]
    key: str | None
    item: str
    body: list[Any] = field(default_factory=list)
    otherwise: list[Any] | None = None


def _opening(match: re.Match[str], budget: Budget) -> _If | _Foreach | None:
    """
    The block an opening tag starts, or C{None} when it is not one mqtwist
    reads (then it is text).
    """
    rest = (match.group("rest") or "").strip()
    if match.group("name") == "if":
        condition = _condition(rest, budget)
        return None if condition is None else _If([(condition, [])])
    found = _FOREACH.match(rest)
    if found is None:
        return None
    key, item = (found.group("first"), found.group("second")) if found.group("second") else (None, found.group("first"))
    return _Foreach((found.group("path"), found.group("modifiers")), key, item)


def _parseBlocks(text: str, budget: Budget) -> list[Any]:
    """
    C{text} as a list of strings and blocks.  Only blocks whose opening tag
    can be read and that are closed are blocks; any other tag is text.

    @raise TemplateTooCostly: for blocks nested deeper than the limit of
        C{budget} (rendering them would exhaust the recursion).
    """
    tags = list(_BLOCK_TAG.finditer(text))
    # first, which opening and closing tags pair up
    blocks: dict[int, _If | _Foreach] = {}
    closing: set[int] = set()
    open_: list[int] = []
    for index, tag in enumerate(tags):
        name = tag.group("name")
        if name in ("if", "foreach") and (block := _opening(tag, budget)) is not None:
            blocks[index] = block
            open_.append(index)
        elif name in ("/if", "/foreach") and not tag.group("rest"):
            kind = name[1:]
            for depth in range(len(open_) - 1, -1, -1):
                if tags[open_[depth]].group("name") == kind:
                    closing.add(index)
                    # blocks opened inside it and never closed are text
                    del open_[depth:]
                    break
    for index in open_:
        del blocks[index]
    # then the tree
    root: list[Any] = []
    stack: list[tuple[_If | _Foreach, list[Any]]] = []
    current = root
    position = 0
    for index, tag in enumerate(tags):
        current.append(text[position : tag.start()])
        position = tag.end()
        name = tag.group("name")
        top = stack[-1][0] if stack else None
        if index in blocks:
            block = blocks[index]
            current.append(block)
            stack.append((block, current))
            if len(stack) > budget.limits.depth:
                raise TemplateTooCostly(
                    "template-depth", f"{{if}} and {{foreach}} blocks are nested more than {budget.limits.depth} deep"
                )
            current = block.branches[0][1] if isinstance(block, _If) else block.body
        elif index in closing:
            current = stack.pop()[1]
        elif name == "elseif" and isinstance(top, _If) and top.otherwise is None:
            condition = _condition((tag.group("rest") or "").strip(), budget)
            if condition is None:
                current.append(tag.group())
                continue
            top.branches.append((condition, []))
            current = top.branches[-1][1]
        elif name == "else" and not tag.group("rest") and isinstance(top, _If) and top.otherwise is None:
            top.otherwise = current = []
        elif name == "foreachelse" and not tag.group("rest") and isinstance(top, _Foreach) and top.otherwise is None:
            top.otherwise = current = []
        else:
            current.append(tag.group())
    current.append(text[position:])
    return root


def _renderBlocks(
    nodes: list[Any],
    scope: Mapping[str, Any],
    substitute: Callable[[str, Mapping[str, Any]], str],
    budget: Budget,
) -> str:
    out: list[str] = []
    for node in nodes:
        if isinstance(node, str):
            # the text itself (a loop repeats it); its variables' values
            # are counted by the substitution
            budget.write(len(node))
            out.append(substitute(node, scope) if "{$" in node else node)
        elif isinstance(node, _If):
            chosen = next((body for condition, body in node.branches if _truthy(condition(scope))), node.otherwise)
            if chosen:
                out.append(_renderBlocks(chosen, scope, substitute, budget))
        else:
            items = _evaluate(node.source[0], node.source[1], scope, False, budget)
            pairs = list(enumerate(items)) if isinstance(items, list) else list(items.items()) if isinstance(
                items, dict
            ) else []
            if not pairs and node.otherwise:
                out.append(_renderBlocks(node.otherwise, scope, substitute, budget))
            for key, item in pairs:
                budget.loop()
                names = {node.item: item} if node.key is None else {node.key: key, node.item: item}
                out.append(_renderBlocks(node.body, ChainMap(names, cast(Any, scope)), substitute, budget))
    return "".join(out)


def _truthy(value: Any) -> bool:
    # PHP's (and Smarty's) truth: "0" and empty things are false
    if value is MISSING or value is None:
        return False
    if isinstance(value, str):
        return value not in ("", "0")
    return bool(value)


def _condition(text: str, budget: Budget) -> Condition | None:
    """
    The test of an C{{if}} or C{{elseif}}: operands (variables with
    modifiers, quoted strings, numbers, C{true}, C{false}, C{null}) compared
    with C{==}, C{!=}, C{<}, C{>}, C{<=}, C{>=}, negated with C{!} or
    C{not}, joined with C{and}/C{&&} and C{or}/C{||}; C{None} for anything
    else.
    """
    tokens: list[tuple[str, Any]] = []
    position = 0
    text = text.rstrip()
    while position < len(text):
        match = _CONDITION_TOKEN.match(text, position)
        if match is None or match.end() == position:
            return None
        position = match.end()
        if match.group("variable"):
            tokens.append(("operand", _variableOperand(match.group("path"), match.group("modifiers"), budget)))
        elif match.group("string"):
            tokens.append(("operand", _constant(_argument(match.group("string")))))
        elif match.group("number"):
            tokens.append(("operand", _constant(_argument(match.group("number")))))
        elif match.group("operator"):
            operator = {"&&": "and", "||": "or", "!": "not"}.get(match.group("operator"), match.group("operator"))
            tokens.append(("operator", operator))
        elif (word := match.group("word").lower()) in _LITERALS:
            tokens.append(("operand", _constant(_LITERALS[word])))
        elif word in ("and", "or", "not"):
            tokens.append(("operator", word))
        else:
            return None
    parsed = _orExpression(tokens, 0)
    if parsed is None or parsed[1] != len(tokens):
        return None
    return parsed[0]


def _constant(value: Any) -> Condition:
    return lambda scope: value


def _variableOperand(path: str, modifiers: str, budget: Budget) -> Condition:
    return lambda scope: _evaluate(path, modifiers, scope, False, budget)


def _orExpression(tokens: list[tuple[str, Any]], at: int) -> tuple[Condition, int] | None:
    return _joined(tokens, at, "or", _andExpression, lambda a, b: lambda s: _truthy(a(s)) or _truthy(b(s)))


def _andExpression(tokens: list[tuple[str, Any]], at: int) -> tuple[Condition, int] | None:
    return _joined(tokens, at, "and", _notExpression, lambda a, b: lambda s: _truthy(a(s)) and _truthy(b(s)))


def _joined(
    tokens: list[tuple[str, Any]],
    at: int,
    word: str,
    operand: Callable[[list[tuple[str, Any]], int], tuple[Condition, int] | None],
    join: Callable[[Condition, Condition], Condition],
) -> tuple[Condition, int] | None:
    first = operand(tokens, at)
    if first is None:
        return None
    condition, at = first
    while at < len(tokens) and tokens[at] == ("operator", word):
        following = operand(tokens, at + 1)
        if following is None:
            return None
        condition, at = join(condition, following[0]), following[1]
    return condition, at


def _notExpression(tokens: list[tuple[str, Any]], at: int) -> tuple[Condition, int] | None:
    # counted rather than recursed: a long run of them exhausts no stack
    negations = 0
    while at < len(tokens) and tokens[at] == ("operator", "not"):
        negations, at = negations + 1, at + 1
    if negations:
        inner = _notExpression(tokens, at)
        if inner is None:
            return None
        negated, odd = inner[0], negations % 2 == 1
        return (lambda scope: _truthy(negated(scope)) != odd), inner[1]
    if at >= len(tokens) or tokens[at][0] != "operand":
        return None
    left = tokens[at][1]
    at += 1
    if at < len(tokens) and tokens[at][0] == "operator" and tokens[at][1] in _COMPARISONS:
        if at + 1 >= len(tokens) or tokens[at + 1][0] != "operand":
            return None
        compare, right = _COMPARISONS[tokens[at][1]], tokens[at + 1][1]
        return (lambda scope: _compared(compare, left(scope), right(scope))), at + 2
    return left, at


def _compared(compare: Callable[[Any, Any], bool], left: Any, right: Any) -> bool:
    """
    Numbers (and strings that are numbers) compare as numbers, anything
    else as the text it is written as.
    """
    numbers = [_number(left), _number(right)]
    if numbers[0] is not None and numbers[1] is not None:
        return compare(numbers[0], numbers[1])
    return compare(_written(left), _written(right))


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and _NUMBER.match(value):
        return float(value)
    return None


def _lookup(variables: Mapping[str, Any], path: str) -> Any:
    value: Any = variables
    for name in path.split("."):
        if isinstance(value, Mapping) and name in value:
            value = value[name]
        elif isinstance(value, list) and name.isdigit() and int(name) < len(value):
            value = value[int(name)]
        else:
            return MISSING
    return value


@functools.lru_cache(maxsize=1024)
def _chain(modifiers: str) -> tuple[tuple[Modifier, tuple[Any, ...], Callable[..., int] | None], ...]:
    """
    The functions and arguments of a variable's modifiers (C{|a|b:1}),
    parsed once for the many messages of a campaign, each with the length
    of its result when an argument multiplies it (L{_GROWTH}).  An
    argument that names a variable is a function of the variables.
    """
    chain = []
    for modifier in _ONE_MODIFIER.finditer(modifiers):
        function = MODIFIERS.get(modifier.group("name"))
        if function is None:
            # MailerQ: "if you call a modifier that does not exist, no effect takes place"
            continue
        arguments = tuple(_argument(text) for text in _ONE_ARGUMENT.findall(modifier.group("arguments")))
        chain.append((function, arguments, _GROWTH.get(modifier.group("name"))))
    return tuple(chain)


def _argument(text: str) -> Any:
    if text[0] in "\"'":
        return _QUOTED_ESCAPE.sub(r"\1", text[1:-1])
    if text in ("true", "false"):
        return text == "true"
    if _NUMBER.match(text):
        return float(text) if "." in text else int(text)
    if text.startswith("$") and re.fullmatch(_PATH, text[1:]):
        return functools.partial(_lookup, path=text[1:])
    return text


def _written(value: Any) -> str:
    """
    A value as the text puts it: strings as they are, numbers and booleans
    as JSON writes them, lists and objects as compact JSON, nothing for
    C{null} or a missing variable.
    """
    if isinstance(value, str):
        return value
    if value is MISSING or value is None:
        return ""
    if type(value) is int:
        # what JSON writes, without its encoder's cost
        return str(value)
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _escape(text: str) -> _HTML:
    return _HTML(html.escape(text, quote=True))


def _isList(value: Any) -> bool:
    return isinstance(value, (list, dict))


def _isEmpty(value: Any) -> bool:
    return value is MISSING or value is None or value == "" or value == [] or value == {}


def _bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.lower() not in ("", "0", "false")
    return bool(value)


Modifier = Callable[[Any, list[Any], bool], Any]


def _onText(function: Callable[..., Any]) -> Modifier:
    """
    A modifier of strings: a list or object is left as it is (MailerQ: "on
    an array this modifier is ignored"), anything else is written first.
    """

    def modifier(value: Any, arguments: list[Any], inHTML: bool) -> Any:
        if _isList(value):
            return value
        return function(_written(value), *arguments)

    return modifier


def _countOfText(function: Callable[..., int]) -> Modifier:
    """
    A count over a string: 0 for a list or an object.
    """

    def modifier(value: Any, arguments: list[Any], inHTML: bool) -> Any:
        if _isList(value):
            return 0
        return function(_written(value), *arguments)

    return modifier


def _digest(name: str) -> Modifier:
    def modifier(value: Any, arguments: list[Any], inHTML: bool) -> Any:
        # on a list, over its items without the keys, as MailerQ documents
        if isinstance(value, dict):
            text = "".join(_written(item) for item in value.values())
        elif isinstance(value, list):
            text = "".join(_written(item) for item in value)
        else:
            text = _written(value)
        return hashlib.new(name, text.encode("utf-8")).hexdigest()

    return modifier


def _base64Decode(text: str) -> str:
    try:
        return base64.b64decode(text, validate=True).decode("utf-8", "replace")
    except ValueError:
        return text


def _cat(value: Any, arguments: list[Any], inHTML: bool) -> Any:
    suffix = _written(arguments[0]) if arguments else ""
    # MailerQ: "if the variable is an array, the string will be used"
    return suffix if _isList(value) else _written(value) + suffix


def _count(value: Any, arguments: list[Any], inHTML: bool) -> Any:
    return len(value) if _isList(value) else 0


def _countCharacters(text: str, whitespace: Any = False) -> int:
    # as Smarty, whose syntax MailerQ's follows: spaces count when asked
    return len(text) if _bool(whitespace) else len("".join(text.split()))


def _countParagraphs(text: str) -> int:
    return len([p for p in re.split(r"[\r\n]+", text) if p])


def _default(value: Any, arguments: list[Any], inHTML: bool) -> Any:
    if _isEmpty(value) and arguments:
        return arguments[0]
    return value


def _empty(value: Any, arguments: list[Any], inHTML: bool) -> Any:
    return _isEmpty(value)


def _escapeAs(value: Any, arguments: list[Any], inHTML: bool) -> Any:
    if _isList(value):
        return value
    text = _written(value)
    kind = arguments[0] if arguments else "html"
    if kind == "html":
        return _escape(text)
    if kind == "url":
        return _HTML(urllib.parse.quote(text, safe=""))
    if kind == "base64":
        return _HTML(base64.b64encode(text.encode("utf-8")).decode("ascii"))
    return value


def _indent(text: str, count: Any = 1, character: Any = " ") -> str:
    prefix = _written(character) * int(count)
    return "".join(prefix + line for line in text.splitlines(keepends=True))


def _nl2br(value: Any, arguments: list[Any], inHTML: bool) -> Any:
    if _isList(value):
        return value
    text = _written(value)
    if inHTML and not isinstance(value, _HTML):
        text = _escape(text)
    return _HTML(_LINE_BREAK.sub(lambda m: "<br />" + m.group(), text))


def _range(value: Any, arguments: list[Any], inHTML: bool) -> Any:
    if not isinstance(value, list):
        return value
    start = int(arguments[0]) if arguments else 0
    end = int(arguments[1]) if len(arguments) > 1 else len(value)
    return value[start:end]


def _regexReplace(value: Any, arguments: list[Any], inHTML: bool, *, timeout: float | None = None) -> Any:
    # Python's regular expression syntax (MailerQ does not say whose), run
    # by the regex module, which can give up after a timeout
    if _isList(value):
        return value
    if not arguments:
        raise TypeError("regex_replace needs a pattern")
    replacement = _written(arguments[1]) if len(arguments) > 1 else ""
    return regex.sub(_written(arguments[0]), replacement, _written(value), timeout=timeout)


def _replace(text: str, old: Any, new: Any = "") -> str:
    old = _written(old)
    return text.replace(old, _written(new)) if old else text


def _spacify(text: str, separator: Any = " ") -> str:
    return _written(separator).join(text)


def _strstr(text: str, needle: Any, before: Any = False) -> str:
    position = text.find(_written(needle))
    if position < 0:
        return ""
    return text[:position] if _bool(before) else text[position:]


def _substr(text: str, start: Any = 0, length: Any = None) -> str:
    begin = int(start)
    if begin < 0:
        begin = max(0, len(text) + begin)
    if length is None:
        return text[begin:]
    return text[begin : begin + max(0, int(length))]


def _truncate(text: str, length: Any = 80, etc: Any = "...", breakWords: Any = False) -> str:
    # Smarty's definition: etc counts in the length; whole words unless asked
    limit, tail = int(length), _written(etc)
    if len(text) <= limit:
        return text
    keep = limit - min(limit, len(tail))
    if not _bool(breakWords):
        text = _withoutLastWord(text[: keep + 1])
    return text[:keep] + tail


def _withoutLastWord(text: str) -> str:
    """
    C{text} without its last word, whole or cut, and the spaces before it
    (Smarty's C{\\s+?(\\S+)?$}, without that pattern's quadratic time on
    long runs of spaces); as it is when no space is left before that word.
    """
    end = len(text)
    while end and not text[end - 1].isspace():
        end -= 1
    start = end
    while start and text[start - 1].isspace():
        start -= 1
    return text if start == end else text[:start]


def _ucfirst(text: str) -> str:
    return text[:1].upper() + text[1:]


def _indentLength(text: str, count: Any = 1, character: Any = " ") -> int:
    return len(text) + len(text.splitlines()) * len(_written(character)) * max(0, int(count))


def _replaceLength(text: str, old: Any, new: Any = "") -> int:
    old = _written(old)
    return len(text) + (text.count(old) * max(0, len(_written(new)) - len(old)) if old else 0)


def _spacifyLength(text: str, separator: Any = " ") -> int:
    return len(text) + max(0, len(text) - 1) * len(_written(separator))


#: the length of the result of the modifiers whose arguments multiply their
#: value, known before it is made (other modifiers add to it, or multiply
#: it by a small constant at most; regex_replace is bounded by its time)
_GROWTH: dict[str, Callable[..., int]] = {
    "indent": _indentLength,
    "replace": _replaceLength,
    "spacify": _spacifyLength,
}

#: MailerQ's modifiers by name: each takes the value, the arguments and
#: whether the text is HTML, and returns the new value
MODIFIERS: dict[str, Modifier] = {
    "base64_encode": _onText(lambda text: base64.b64encode(text.encode("utf-8")).decode("ascii")),
    "base64_decode": _onText(_base64Decode),
    "cat": _cat,
    "count": _count,
    "count_characters": _countOfText(_countCharacters),
    "count_paragraphs": _countOfText(_countParagraphs),
    "count_words": _countOfText(lambda text: len(text.split())),
    "default": _default,
    "empty": _empty,
    "escape": _escapeAs,
    "indent": _onText(_indent),
    "md5": _digest("md5"),
    "nl2br": _nl2br,
    "range": _range,
    "regex_replace": _regexReplace,
    "replace": _onText(_replace),
    "sha1": _digest("sha1"),
    "sha256": _digest("sha256"),
    "sha512": _digest("sha512"),
    "spacify": _onText(_spacify),
    "strlen": _countOfText(len),
    "strstr": _onText(_strstr),
    "substr": _onText(_substr),
    "tolower": _onText(str.lower),
    "toupper": _onText(str.upper),
    # MailerQ: spaces, tabs, newlines, carriage returns, vertical tabs, NULs
    "trim": _onText(lambda text: text.strip(" \t\n\r\x0b\x00")),
    "truncate": _onText(_truncate),
    "ucfirst": _onText(_ucfirst),
    "urlencode": _onText(urllib.parse.quote_plus),
    "urldecode": _onText(urllib.parse.unquote_plus),
}
