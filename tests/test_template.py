"""
The personalization template engine (L{mqtwist.content.template}): each
construct, each of MailerQ's modifiers, values written as JSON writes
them, HTML escaping, what is left as written, and values refused in
header fields.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import pytest

from mqtwist.content.template import (
    MODIFIERS,
    Budget,
    TemplateLimits,
    TemplateTooCostly,
    UnsafeValue,
    hasTemplate,
    render,
)

DATA: dict[str, Any] = {
    "ourname": "The MailerQ test team",
    "name": "John Doe",
    "lower": "jOHN dOE",
    "age": 33,
    "ratio": 1.5,
    "big": 1e20,
    "yes": True,
    "nothing": None,
    "empty": "",
    "children": ["Peter", "Angela", "Brandon"],
    "address": {"city": "Amsterdam", "street": {"name": "Damrak", "number": 1}},
    "html": '<b class="x">Tom & Jerry\'s</b>',
    "text": "  line one\nline two  \n",
    "words": "Hello world!",
    "digits": "0123456789",
    "encoded": "SGVsbG8=",
    "url": "a b&c=d/é",
    "urlencoded": "a+b%26c",
    "paragraphs": "one\n\ntwo\nthree",
    "long": "The quick brown fox jumps over the lazy dog",
}

CASES = [
    # variables
    ("{$name}", "John Doe"),
    ("Hi {$name}, {$age}!", "Hi John Doe, 33!"),
    ("{$address.city}", "Amsterdam"),
    ("{$address.street.name} {$address.street.number}", "Damrak 1"),
    ("{$children.1}", "Angela"),
    ("{$children.3}", ""),
    ("{$missing}", ""),
    ("{$address.missing.deeper}", ""),
    ("{$name.first}", ""),
    # values as JSON writes them
    ("{$age}", "33"),
    ("{$ratio}", "1.5"),
    ("{$big}", "1e+20"),
    ("{$yes}", "true"),
    ("{$nothing}", ""),
    ("{$children}", '["Peter","Angela","Brandon"]'),
    ("{$address.street}", '{"name":"Damrak","number":1}'),
    # left as written
    ("{ $name}", "{ $name}"),
    ("{$name", "{$name"),
    ("{$name|}", "{$name|}"),
    ("{$name|default:}", "{$name|default:}"),
    ("{$1abc}", "{$1abc}"),
    ("p { color: red; }", "p { color: red; }"),
    ("{name}", "{name}"),
    # an unknown modifier has no effect (MailerQ)
    ("{$name|nosuchmodifier}", "John Doe"),
    ("{$name|nosuchmodifier:1|toupper}", "JOHN DOE"),
    # chains
    ("{$lower|tolower|ucfirst}", "John doe"),
    # modifiers, in MailerQ's table order
    ("{$words|base64_encode}", "SGVsbG8gd29ybGQh"),
    ("{$encoded|base64_decode}", "Hello"),
    ("{$words|base64_decode}", "Hello world!"),
    ('{$name|cat:" Jr."}', "John Doe Jr."),
    ('{$children|cat:"all"}', "all"),
    ("{$name|cat:$age}", "John Doe33"),
    ("{$children|count}", "3"),
    ("{$name|count}", "0"),
    ("{$words|count_characters}", "11"),
    ("{$words|count_characters:true}", "12"),
    ("{$paragraphs|count_paragraphs}", "3"),
    ("{$long|count_words}", "9"),
    ('{$missing|default:"friend"}', "friend"),
    ('{$empty|default:"friend"}', "friend"),
    ('{$nothing|default:"friend"}', "friend"),
    ('{$name|default:"friend"}', "John Doe"),
    ("{$missing|default:'single'}", "single"),
    ('{$missing|default:"say \\"hi\\""}', 'say "hi"'),
    ("{$missing|default:42}", "42"),
    ("{$missing|default:$name}", "John Doe"),
    ("{$missing|empty}", "true"),
    ("{$name|empty}", "false"),
    ("{$html|escape}", "&lt;b class=&quot;x&quot;&gt;Tom &amp; Jerry&#x27;s&lt;/b&gt;"),
    ('{$html|escape:"html"}', "&lt;b class=&quot;x&quot;&gt;Tom &amp; Jerry&#x27;s&lt;/b&gt;"),
    ('{$url|escape:"url"}', "a%20b%26c%3Dd%2F%C3%A9"),
    ('{$words|escape:"base64"}', "SGVsbG8gd29ybGQh"),
    ("{$paragraphs|indent}", " one\n \n two\n three"),
    ('{$paragraphs|indent:2:"-"}', "--one\n--\n--two\n--three"),
    ("{$name|md5}", hashlib.md5(b"John Doe").hexdigest()),
    ("{$children|md5}", hashlib.md5(b"PeterAngelaBrandon").hexdigest()),
    ("{$name|sha1}", hashlib.sha1(b"John Doe").hexdigest()),
    ("{$name|sha256}", hashlib.sha256(b"John Doe").hexdigest()),
    ("{$name|sha512}", hashlib.sha512(b"John Doe").hexdigest()),
    ("{$paragraphs|nl2br}", "one<br />\n<br />\ntwo<br />\nthree"),
    ("{$children|range:1:3}", '["Angela","Brandon"]'),
    ("{$children|range:1}", '["Angela","Brandon"]'),
    ("{$name|range:1}", "John Doe"),
    ('{$digits|regex_replace:"\\d":"#"}', "##########"),
    ('{$words|replace:"world":"there"}', "Hello there!"),
    ('{$name|spacify:"."}', "J.o.h.n. .D.o.e"),
    ("{$name|strlen}", "8"),
    ("{$children|strlen}", "0"),
    ('{$words|strstr:" ":true}', "Hello"),
    ('{$words|strstr:"w":false}', "world!"),
    ('{$words|strstr:"w"}', "world!"),
    ('{$words|strstr:"z"}', ""),
    ("{$digits|substr:2}", "23456789"),
    ("{$digits|substr:4:3}", "456"),
    ("{$name|tolower}", "john doe"),
    ("{$name|toupper}", "JOHN DOE"),
    ("[{$text|trim}]", "[line one\nline two]"),
    ("{$long|truncate}", "The quick brown fox jumps over the lazy dog"),
    ("{$long|truncate:20}", "The quick brown..."),
    ('{$long|truncate:20:"":true}', "The quick brown fox "),
    ('{$long|truncate:20:"..":true}', "The quick brown fo.."),
    ("{$lower|ucfirst}", "JOHN dOE"),
    ("{$url|urlencode}", "a+b%26c%3Dd%2F%C3%A9"),
    ("{$urlencoded|urldecode}", "a b&c"),
    # a modifier whose argument is of the wrong kind has no effect
    ('{$digits|substr:"x"}', "0123456789"),
    ('{$digits|regex_replace:"(":"x"}', "0123456789"),
]


@pytest.mark.parametrize(("template", "expected"), CASES)
def test_render(template: str, expected: str) -> None:
    assert render(template, DATA) == expected


def test_everyModifierOfMailerQIsImplemented() -> None:
    # the table of personalization-modifiers.md
    documented = {
        "base64_encode", "base64_decode", "cat", "count", "count_characters", "count_paragraphs",
        "count_words", "default", "empty", "escape", "indent", "md5", "nl2br", "range",
        "regex_replace", "replace", "sha1", "sha256", "sha512", "spacify", "strlen", "strstr",
        "substr", "tolower", "toupper", "trim", "truncate", "ucfirst", "urlencode", "urldecode",
    }
    assert set(MODIFIERS) == documented
    tested = {name for template, _ in CASES for name in documented if f"|{name}" in template}
    assert tested == documented


BLOCK_CASES = [
    # MailerQ's example of the empty modifier (personalization-modifiers.md)
    ("{if $name|empty}\n    Dear customer,\n{else}\n    Dear {$name},\n{/if}", "\n    Dear John Doe,\n"),
    ("{if $missing|empty}\n    Dear customer,\n{else}\n    Dear {$missing},\n{/if}", "\n    Dear customer,\n"),
    ("{if $name}yes{/if}", "yes"),
    ("{if $missing}yes{/if}", ""),
    ("{if $nothing}yes{else}no{/if}", "no"),
    ("{if $empty}yes{else}no{/if}", "no"),
    ("{if $yes}yes{else}no{/if}", "yes"),
    ("{if !$missing}no value{/if}", "no value"),
    ("{if not $name}x{else}y{/if}", "y"),
    ("{if $age == 33}33{/if}", "33"),
    ('{if $age == "33"}33{/if}', "33"),
    ("{if $age != 33}x{else}y{/if}", "y"),
    ("{if $age > 40}old{elseif $age >= 33}grown{elseif $age > 12}teen{else}child{/if}", "grown"),
    ("{if $age < 40 and $name == 'John Doe'}a{/if}", "a"),
    ("{if $age < 20 && $name == 'John Doe'}a{else}b{/if}", "b"),
    ("{if $age < 20 or $yes}a{/if}", "a"),
    ("{if $age < 20 || !$yes}a{else}b{/if}", "b"),
    ("{if $name|strlen > 5}long{/if}", "long"),
    ("{if $children|count == 3}three{/if}", "three"),
    ("{if $nothing == null}null{/if}", "null"),
    ("{if $yes == true}t{/if}", "t"),
    ("{if $ratio >= 1.5}r{/if}", "r"),
    ("{foreach $children as $child}<{$child}>{/foreach}", "<Peter><Angela><Brandon>"),
    ("{foreach $children as $i => $child}{$i}:{$child|tolower} {/foreach}", "0:peter 1:angela 2:brandon "),
    ("{foreach $address.street as $key => $value}{$key}={$value};{/foreach}", "name=Damrak;number=1;"),
    ("{foreach $children|range:1 as $child}{$child}{/foreach}", "AngelaBrandon"),
    ("{foreach $missing as $x}{$x}{foreachelse}none{/foreach}", "none"),
    ("{foreach $name as $x}{$x}{foreachelse}not a list{/foreach}", "not a list"),
    # the loop's names hide the data's while it runs
    ("{foreach $children as $name}{$name} {/foreach}{$name}", "Peter Angela Brandon John Doe"),
    # nested
    ("{foreach $children as $c}{if $c == 'Angela'}[{$c}]{else}{$c}{/if}{/foreach}", "Peter[Angela]Brandon"),
    ("{if $yes}{foreach $children as $c}{if $c != 'Peter'}{$c}{/if}{/foreach}{/if}", "AngelaBrandon"),
    # what is not read is left as written, with the variables in it replaced
    ("{if $name}unclosed {$name}", "{if $name}unclosed John Doe"),
    ("{if $name}a{if $age}b{/if}", "{if $name}ab"),
    ("{/if}{else}{foreachelse}{/foreach}", "{/if}{else}{foreachelse}{/foreach}"),
    ("{if you like}x{/if}", "{if you like}x{/if}"),
    ("{if $name or}x{/if}", "{if $name or}x{/if}"),
    ("{if $name = 1}x{/if}", "{if $name = 1}x{/if}"),
    ("{if}x{/if}", "{if}x{/if}"),
    ("{foreach $children}x{/foreach}", "{foreach $children}x{/foreach}"),
    ("{foreach from=$children item=c}x{/foreach}", "{foreach from=$children item=c}x{/foreach}"),
    ("{if $yes}a{else}b{else}c{/if}", "a"),
    ("{if $yes}a{/foreach}b{/if}", "a{/foreach}b"),
    ("{section name=i loop=$children}x{/section}", "{section name=i loop=$children}x{/section}"),
]


@pytest.mark.parametrize(("template", "expected"), BLOCK_CASES)
def test_blocks(template: str, expected: str) -> None:
    assert render(template, DATA) == expected


def test_blocksInHTMLAndHeaders() -> None:
    assert render("{foreach $children as $c}<li>{$c}</li>{/foreach}", {"children": ["<b>"]}, html=True) == (
        "<li>&lt;b&gt;</li>"
    )
    with pytest.raises(UnsafeValue):
        render("{foreach $xs as $x}{$x}{/foreach}", {"xs": ["a\r\nBcc: b@example.com"]}, header=True)


HTML_CASES = [
    ("<p>{$html}</p>", "<p>&lt;b class=&quot;x&quot;&gt;Tom &amp; Jerry&#x27;s&lt;/b&gt;</p>"),
    # escaped once, not twice
    ("{$html|escape}", "&lt;b class=&quot;x&quot;&gt;Tom &amp; Jerry&#x27;s&lt;/b&gt;"),
    # nl2br makes HTML of escaped text
    ('{$html|cat:"\n"|nl2br}', "&lt;b class=&quot;x&quot;&gt;Tom &amp; Jerry&#x27;s&lt;/b&gt;<br />\n"),
    ("{$age}", "33"),
    ('<a href="https://example.com/?q={$url|urlencode}">', '<a href="https://example.com/?q=a+b%26c%3Dd%2F%C3%A9">'),
    ('{$missing|default:"<none>"}', "&lt;none&gt;"),
]


@pytest.mark.parametrize(("template", "expected"), HTML_CASES)
def test_renderHTML(template: str, expected: str) -> None:
    assert render(template, DATA, html=True) == expected


def test_newlinesOfValuesFollowTheText() -> None:
    assert render("a\r\n{$paragraphs}\r\n", DATA, newline="\r\n") == "a\r\none\r\n\r\ntwo\r\nthree\r\n"
    assert render("{$x}", {"x": "a\r\nb\rc"}) == "a\nb\nc"


@pytest.mark.parametrize("value", ["a\r\nBcc: x@example.com", "a\nb", "a\rb", "a\x00b", "a\x1bb", "a\x7fb"])
def test_headerValuesWithControlCharactersAreRefused(value: str) -> None:
    with pytest.raises(UnsafeValue) as caught:
        render("Hello {$who.name}", {"who": {"name": value}}, header=True)
    assert caught.value.variable == "who.name"
    assert "'who.name'" in str(caught.value)


def test_headerValuesMadeUnsafeByAModifierAreRefused() -> None:
    with pytest.raises(UnsafeValue):
        render("{$x|base64_decode}", {"x": "YQ0KYg=="}, header=True)


def test_headerValuesWithoutControlCharacters() -> None:
    assert render("Hello {$name}\t!", DATA, header=True) == "Hello John Doe\t!"
    # the same value is fine in a body
    assert render("{$x}", {"x": "a\r\nb"}) == "a\nb"


# -- the work a template makes is bounded (TemplateLimits) -------------------------


def test_loopsAreCountedAllTogether() -> None:
    """
    Nested {foreach} blocks multiply: their iterations are counted in all,
    and one past the limit ends the rendering.
    """
    text = "{foreach $a as $x}{foreach $a as $y}{$y}{/foreach}{/foreach}"
    limits = TemplateLimits(loops=4 + 16)
    assert render(text, {"a": [1, 2, 3, 4]}, budget=Budget(limits)) == "1234" * 4
    with pytest.raises(TemplateTooCostly) as caught:
        render(text, {"a": [1, 2, 3, 4]}, budget=Budget(TemplateLimits(loops=19)))
    assert caught.value.limit == "template-loops"
    assert "more than 19 times" in str(caught.value)


def test_theDefaultLoopLimitStopsThreeNestedLoops() -> None:
    text = "{foreach $a as $x}{foreach $a as $y}{foreach $a as $z}{$x}{/foreach}{/foreach}{/foreach}"
    with pytest.raises(TemplateTooCostly, match="template-loops"):
        render(text, {"a": list(range(200))})


def test_outputIsCounted() -> None:
    """
    What values and loop bodies write is counted against the output limit.
    """
    budget = Budget(TemplateLimits(output=10))
    assert render("{$s}", {"s": "x" * 10}, budget=budget) == "x" * 10
    with pytest.raises(TemplateTooCostly) as caught:
        render("{$s}", {"s": "x"}, budget=budget)
    assert caught.value.limit == "max-job-bytes"
    with pytest.raises(TemplateTooCostly, match="max-job-bytes"):
        render("{foreach $a as $x}abcd{/foreach}", {"a": [1, 2, 3]}, budget=Budget(TemplateLimits(output=10)))


@pytest.mark.parametrize(
    "text",
    [
        "{$s|indent:50000000}",
        '{$s|spacify:"0123456789"}',
        '{$s|replace:"x":"0123456789"}',
        '{$s|replace:"x":"0123456789"|replace:"0":"0123456789"}',
    ],
)
def test_modifiersThatMultiplyAreRefusedBeforeTheyWrite(text: str) -> None:
    """
    A count or a text that multiplies a value is checked before the value
    is made: C{indent:50000000} made 52 MB before it was counted.
    """
    with pytest.raises(TemplateTooCostly, match="max-job-bytes"):
        render(text, {"s": "x" * 1000}, budget=Budget(TemplateLimits(output=5000)))


def test_modifiersWithinTheLimitStillWork() -> None:
    limits = TemplateLimits(output=5000)
    assert render("{$s|indent:3}", {"s": "a\nb"}, budget=Budget(limits)) == "   a\n   b"
    assert render('{$s|replace:"x":"yy"}', {"s": "xax"}, budget=Budget(limits)) == "yyayy"
    assert render("{$s|spacify}", {"s": "abc"}, budget=Budget(limits)) == "a b c"


def test_regexReplaceHasATimeout() -> None:
    """
    A pattern that backtracks for ever is stopped by the regex module's
    timeout (Python's re cannot stop it), and the time is counted for all
    the patterns of the message.
    """
    with pytest.raises(TemplateTooCostly) as caught:
        render('{$s|regex_replace:"(a|aa)+b"}', {"s": "a" * 60}, budget=Budget(TemplateLimits(regexSeconds=0.05)))
    assert caught.value.limit == "template-regex-seconds"
    budget = Budget(TemplateLimits(regexSeconds=0.05))
    budget.regexSeconds = 0.0
    with pytest.raises(TemplateTooCostly, match="template-regex-seconds"):
        render('{$s|regex_replace:"(a|aa)+b"}', {"s": "a" * 60}, budget=budget)


def test_regexReplaceStillReplaces() -> None:
    assert render(r'{$s|regex_replace:"\d+":"#"}', {"s": "a1b22c"}) == "a#b#c"
    # a pattern that does not compile leaves the value as it is
    assert render('{$s|regex_replace:"("}', {"s": "a(b"}) == "a(b"


def test_blocksNestedTooDeepAreRefused() -> None:
    """
    1,000 nested {if} exhausted the recursion (a "bug"); past the depth
    limit the template is refused.
    """
    deep = "{if 1}" * 1000 + "x" + "{/if}" * 1000
    with pytest.raises(TemplateTooCostly) as caught:
        render(deep, {})
    assert caught.value.limit == "template-depth"
    limits = TemplateLimits(depth=3)
    assert render("{if 1}" * 3 + "x" + "{/if}" * 3, {}, budget=Budget(limits)) == "x"
    with pytest.raises(TemplateTooCostly, match="nested more than 3 deep"):
        render("{if 1}" * 4 + "x" + "{/if}" * 4, {}, budget=Budget(limits))


def test_unclosedBlocksAreNotNested() -> None:
    # tags that are text (never closed) count for no depth
    assert render("{if 1}" * 500 + "x", {}) == "{if 1}" * 500 + "x"


def test_manyNegations() -> None:
    assert render("{if " + "!" * 5000 + "$yes}a{else}b{/if}", {"yes": True}) == "a"
    assert render("{if " + "not " * 5001 + "$yes}a{else}b{/if}", {"yes": True}) == "b"


def test_truncateOnLongRunsOfSpaces() -> None:
    """
    Smarty's pattern took quadratic time on long runs of spaces; the
    words are dropped the same way.
    """
    assert render("{$s|truncate:40000}", {"s": " " * 40001 + "x"}) == "..."
    for value in ["ab cd efzz", "ab  cdefzz", "abcdefghzz", "a bcdefghzz", "  abcdefzz", "ab\tc\nd ezz", "abcde fzz"]:
        smarty = re.sub(r"\s+?(\S+)?\Z", "", value[:6])[:5] + "..."
        assert render("{$s|truncate:8}", {"s": value}) == smarty


@pytest.mark.parametrize(
    "text",
    ["{if $vip}Gold{else}Welcome{/if}", "{foreach $a as $x}{/foreach}Welcome", "{if\t$vip}Gold{else}Welcome{/if}"],
)
def test_blocksWithoutVariablesAreTemplates(text: str) -> None:
    assert hasTemplate(text)
    assert render(text, {"vip": False, "a": []}) == "Welcome"


def test_textWithoutTemplates() -> None:
    assert not hasTemplate("p {color: red} {iffy} {foreachx}")
