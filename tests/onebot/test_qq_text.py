"""Text shaping for the QQ link: streamed cuts, limits, forward nodes, triggers, model text."""

from __future__ import annotations

import random
import time
from typing import Any

import pytest

from adapters.onebot.message import normalize_message, parse_forward_nodes
from adapters.onebot.qq_text import (
    cut_ready,
    forward_nodes,
    mentions_self,
    quote_context,
    reply_id,
    split_for_limit,
    strip_trigger,
    to_model_text,
)
from bridge.models import Segment

T = Segment.text
FAMILY = "\U0001f468\u200d\U0001f469\u200d\U0001f467"  # one emoji of five code points
FLAG = "\U0001f1e8\U0001f1f3"
SMILE = "\U0001f60a"


def final_pieces(text: str, **kw: Any) -> list[str]:
    pieces, rest = cut_ready(text, final=True, **kw)
    assert rest == ""
    return pieces


def streamed(chunks: list[str], **kw: Any) -> list[str]:
    """Feed chunks as a session would: the rest plus each new chunk, then a final flush."""
    out: list[str] = []
    rest = ""
    for chunk in chunks:
        pieces, rest = cut_ready(rest + chunk, **kw)
        out += pieces
    pieces, rest = cut_ready(rest, final=True, **kw)
    assert rest == ""
    return out + pieces


def random_chunks(text: str, rng: random.Random) -> list[str]:
    chunks = []
    i = 0
    while i < len(text):
        k = rng.choice([1, 1, 2, 3, 4, 7, 16, 64])
        chunks.append(text[i : i + k])
        i += k
    return chunks


def assert_in_order(text: str, pieces: list[str], rest: str = "") -> None:
    """The pieces (and rest) are the text in order, losing only whitespace where it was cut."""
    cur = 0
    for piece in pieces:
        assert piece and piece == piece.strip()
        found = text.find(piece, cur)
        assert found >= 0, (piece, text)
        assert text[cur:found].strip() == "", (text[cur:found], text)
        cur = found + len(piece)
    tail = text[cur:]
    assert tail.endswith(rest)
    assert tail[: len(tail) - len(rest)].strip() == ""


# ----- cut_ready: where pieces end -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "pieces", "rest"),
    [
        (
            "Hello there, friend. How are you doing today? Fine",
            ["Hello there, friend.", "How are you doing today?"],
            " Fine",
        ),
        # A sentence at the very end may still grow ("today?!", "today?」") until more arrives.
        ("Hello there, my friend.", [], "Hello there, my friend."),
        (
            "今天天气真好。我们去公园散步吧！你觉得怎么样？",
            ["今天天气真好。我们去公园散步吧！"],
            "你觉得怎么样？",
        ),
        # Closing quotes stay with their sentence; "？！" and "……" are one end each.
        (
            "他说：“你好啊朋友！”然后离开了。真的吗？！我不信……你再说一遍好不好。",
            ["他说：“你好啊朋友！”然后离开了。"],
            "真的吗？！我不信……你再说一遍好不好。",
        ),
        # A quote running on into its sentence is not an end (「…」と言った).
        (
            "「これは本当に美しい景色ですね。」と彼は言いました。次",
            ["「これは本当に美しい景色ですね。」と彼は言いました。"],
            "次",
        ),
        (
            "“我很好，谢谢你的关心。”“那就好，我也放心了。”他说",
            ["“我很好，谢谢你的关心。”"],
            "“那就好，我也放心了。”他说",
        ),
        (
            'He said "stop right there." Then he left the room. ',
            ['He said "stop right there."', "Then he left the room."],
            " ",
        ),
        (
            "(This is in brackets.) And this is after them. ",
            ["(This is in brackets.)", "And this is after them."],
            " ",
        ),
        (
            "Pi is 3.14 and e is 2.71 roughly. Next sentence is here. ",
            ["Pi is 3.14 and e is 2.71 roughly.", "Next sentence is here."],
            " ",
        ),
        (
            "We need fruit, e.g. apples and pears, i.e. food. Mr. Smith of the U.S. agrees. ",
            ["We need fruit, e.g. apples and pears, i.e. food.", "Mr. Smith of the U.S. agrees."],
            " ",
        ),
        (
            "See https://example.com/a.b?c=d!e.f for details. Then go there now. ",
            ["See https://example.com/a.b?c=d!e.f for details.", "Then go there now."],
            " ",
        ),
        # Half-width punctuation between CJK letters still ends a sentence.
        (
            "好的!我来帮你看看这个问题吧?然后我们再说",
            ["好的!我来帮你看看这个问题吧?"],
            "然后我们再说",
        ),
        # An emoji (or tilde) right after the end belongs to the sentence.
        (
            f"好的！{SMILE}我来帮你看看这个问题吧。然后呢",
            [f"好的！{SMILE}我来帮你看看这个问题吧。"],
            "然后呢",
        ),
        (
            "Sounds great!~ Let me check that for you. ok",
            ["Sounds great!~", "Let me check that for you."],
            " ok",
        ),
        ("Yes!~ Let me check that for you. ok", ["Yes!~ Let me check that for you."], " ok"),
    ],
)
def test_sentence_ends(text: str, pieces: list[str], rest: str) -> None:
    assert cut_ready(text) == (pieces, rest)


def test_paragraphs_end_pieces() -> None:
    text = "First paragraph without an end\n\nSecond one, also open\n \t\nThird"
    assert cut_ready(text) == (
        ["First paragraph without an end", "Second one, also open"],
        "\n \t\nThird",
    )
    # A single line break is not a paragraph.
    assert cut_ready("line one is here\nline two is here\nthree") == (
        [],
        "line one is here\nline two is here\nthree",
    )
    # Windows line ends too.
    assert cut_ready("First paragraph here\r\n\r\nSecond")[0] == ["First paragraph here"]


def test_numbered_list_markers_are_not_sentence_ends() -> None:
    text = (
        "Steps:\n1. Open the settings page\n2. Click the save button\n\nDone with the list now.\n\n"
    )
    assert final_pieces(text) == [
        "Steps:\n1. Open the settings page\n2. Click the save button",
        "Done with the list now.",
    ]
    # A year at the end of a sentence is a sentence end.
    assert cut_ready("I was born in 1990. Then I grew up. ")[0] == [
        "I was born in 1990.",
        "Then I grew up.",
    ]


def test_short_pieces_run_on_unless_final() -> None:
    assert cut_ready("OK. Sure. That sounds like a great plan to me. Yes") == (
        ["OK. Sure. That sounds like a great plan to me."],
        " Yes",
    )
    assert cut_ready("OK. Sure. ") == ([], "OK. Sure. ")
    assert final_pieces("OK. Sure. ") == ["OK. Sure."]
    assert final_pieces("A long enough first sentence. OK.") == [
        "A long enough first sentence.",
        "OK.",
    ]
    assert cut_ready("OK. Sure.", min_chars=0, final=True)[0] == ["OK.", "Sure."]
    # Short paragraphs run on too, keeping their blank line.
    assert final_pieces("Hi!\n\nHow can I help you today?") == ["Hi!\n\nHow can I help you today?"]


def test_whitespace_only_and_empty() -> None:
    assert cut_ready("") == ([], "")
    assert cut_ready("", final=True) == ([], "")
    assert cut_ready(" \n\n\t ") == ([], " \n\n\t ")
    assert cut_ready(" \n\n\t ", final=True) == ([], "")
    assert final_pieces("\n\n  Hello there.  \n\n") == ["Hello there."]


# ----- cut_ready: code --------------------------------------------------------------------------------


def test_fenced_code_is_never_cut() -> None:
    text = (
        "Here is the code:\n```py\nx = 1. y = 2\n\nprint(x)! done? yes.\n```\n"
        "That is all, folks. More text."
    )
    assert cut_ready(text) == (
        [
            "Here is the code:",
            "```py\nx = 1. y = 2\n\nprint(x)! done? yes.\n```",
            "That is all, folks.",
        ],
        " More text.",
    )


def test_open_fence_holds_back_until_closed_or_final() -> None:
    head = "Look at this snippet now.\n```\nline one. line two!\n\nline three? "
    pieces, rest = cut_ready(head)
    assert pieces == ["Look at this snippet now."]
    assert rest.lstrip().startswith("```")
    # A run of backticks at the end might be the closing fence or longer; wait.
    assert cut_ready(rest + "\n``")[0] == []
    pieces, rest = cut_ready(rest + "\n```\nAfter the code block. x")
    assert pieces == ["```\nline one. line two!\n\nline three? \n```", "After the code block."]
    # Unclosed at the end: everything after the fence is code, flushed whole.
    assert final_pieces("```\na. b. c.\n\nd. e. f.") == ["```\na. b. c.\n\nd. e. f."]


def test_longer_fence_needs_as_long_a_closer() -> None:
    text = "````md\n```py\nx. y. z\n```\nstill inside. yes.\n````\nOutside now, at last. "
    assert final_pieces(text) == [
        "````md\n```py\nx. y. z\n```\nstill inside. yes.\n````",
        "Outside now, at last.",
    ]


def test_inline_code_is_never_cut() -> None:
    assert cut_ready("Run `x = 1. y = 2` now please. Then continue.") == (
        ["Run `x = 1. y = 2` now please."],
        " Then continue.",
    )
    assert final_pieces("Use ``a `tick`. b`` here please. And then go on.") == [
        "Use ``a `tick`. b`` here please.",
        "And then go on.",
    ]


def test_stray_backtick_waits_only_until_the_line_ends() -> None:
    # An unclosed backtick might open inline code: hold back.
    assert cut_ready("It's a ` stray one. And more text here")[0] == []
    # Its line ended without a closer: it was just a character.
    pieces, _ = cut_ready("It's a ` stray one. And more text here\nnext")
    assert pieces == ["It's a ` stray one."]
    assert final_pieces("It's a ` stray one. And more.") == ["It's a ` stray one.", "And more."]


def test_cut_before_a_fence_needs_it_to_open_a_line() -> None:
    assert final_pieces("Some introduction text:\n  ```sh\nls -la\n```") == [
        "Some introduction text:",
        "```sh\nls -la\n```",
    ]
    # Mid-line triple backticks are code too, but no cut is made before them.
    assert final_pieces("Inline ```a. b``` stays here, whole. ") == [
        "Inline ```a. b``` stays here, whole."
    ]


# ----- cut_ready: max_chars ---------------------------------------------------------------------------


def test_long_text_without_ends_is_cut_at_the_last_space() -> None:
    text = "word " * 300
    pieces = final_pieces(text, max_chars=100)
    assert all(len(p) <= 100 for p in pieces)
    assert [len(p) for p in pieces] == [99] * 15  # 20 words each, cut at the space before "word"
    assert " ".join(pieces).split() == ["word"] * 300


def test_long_line_breaks_prefer_line_ends() -> None:
    line = "a bullet item with several words"  # 32 characters
    text = "\n".join([line] * 10)
    pieces = final_pieces(text, max_chars=100)
    assert pieces[0] == f"{line}\n{line}\n{line}"
    assert all(p.count("\n") == 2 or p is pieces[-1] for p in pieces)


def test_cjk_without_punctuation_is_cut_between_letters() -> None:
    pieces = final_pieces("汉字" * 400, max_chars=300)
    assert [len(p) for p in pieces] == [300, 300, 200]
    # Never starting a piece with a comma or closing quote.
    text = ("我觉得，“这个”" * 100)[:700]
    for p in final_pieces(text, max_chars=50):
        assert p[0] not in "，”" and len(p) <= 50


def test_no_boundary_at_all_is_a_hard_cut() -> None:
    assert [len(p) for p in final_pieces("a" * 1500)] == [600, 600, 300]
    assert [len(p) for p in final_pieces("x" * 25, max_chars=10)] == [10, 10, 5]


def test_hard_cut_never_splits_a_visible_character() -> None:
    text = "a" * 9 + FAMILY + "b" * 20
    pieces = final_pieces(text, max_chars=10, min_chars=0)
    assert pieces[0] == "a" * 9
    assert pieces[1].startswith(FAMILY)
    assert "".join(pieces) == text
    accented = "e\u0301" * 20
    for p in final_pieces(accented, max_chars=7, min_chars=0):
        assert not p.startswith("\u0301")
    for p in final_pieces(FLAG * 10, max_chars=5, min_chars=0):
        assert len(p) % 2 == 0
    # A single visible character longer than the limit is cut rather than never sent.
    assert "".join(final_pieces(FAMILY, max_chars=2, min_chars=0)) == FAMILY


def test_code_longer_than_max_chars_stays_whole() -> None:
    code = "```\n" + "print('hello world')\n" * 100 + "```"
    text = "Intro sentence here, long enough.\n" + code + "\nOutro sentence here, long enough."
    pieces = final_pieces(text, max_chars=200)
    assert code in pieces
    assert pieces[0] == "Intro sentence here, long enough."
    # A long sentence with code in the middle ends before the code.
    text = "word " * 10 + "`" + "x" * 300 + "` tail."
    pieces = final_pieces(text, max_chars=100)
    assert pieces[0] == ("word " * 10).strip()
    # The code that runs past the limit is a piece of its own, whatever its length.
    assert pieces[1:] == ["`" + "x" * 300 + "`", "tail."]


def test_pieces_stay_within_max_chars_outside_code() -> None:
    rng = random.Random(20240601)
    words = [
        "alpha",
        "beta",
        "3.14",
        "e.g.",
        "汉字",
        "你好。",
        "Hi!",
        "\n",
        "\n\n",
        SMILE,
        "aaaaaaaaaaaaaaa",
    ]
    for _ in range(200):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(0, 120)))
        max_chars = rng.choice([1, 5, 17, 60])
        for p in final_pieces(text, max_chars=max_chars, min_chars=rng.choice([0, 4, 12])):
            assert len(p) <= max_chars


def test_parameter_checks() -> None:
    with pytest.raises(ValueError):
        cut_ready("x", max_chars=0)
    # min above max is taken as max; a negative min as 0.
    text = "One sentence. Two sentences. Three sentences."
    assert final_pieces(text, min_chars=100, max_chars=20) == final_pieces(
        text, min_chars=20, max_chars=20
    )
    assert final_pieces(text, min_chars=-5) == final_pieces(text, min_chars=0)


# ----- cut_ready: adversarial input -------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "!" * 5000,
        "。" * 3000,
        "?!.…" * 1000,
        "`" * 1000,
        "``a`" * 500,
        "\ud800\udc00\ud800 lone surrogates. \udfff more text here. " * 20,
        "\x00\x01\x02. control characters are fine. \u2028 line separator. " * 10,
        '"' * 400 + ". " + ")" * 400,
        "a." * 2000,
        "\n" * 3000,
        "e\u0301" * 2000,
        FAMILY * 400,
    ],
)
def test_adversarial_text_never_crashes_and_loses_nothing(text: str) -> None:
    pieces = final_pieces(text)
    assert_in_order(text, pieces)
    for chunk_size in (1, 7):
        assert (
            streamed([text[i : i + chunk_size] for i in range(0, len(text), chunk_size)]) == pieces
        )


@pytest.mark.parametrize(
    "text",
    [
        "a" * 400_000,
        "!" * 400_000,
        "汉字。" * 130_000,
        "``a`" * 100_000,
        "word " * 80_000,
        "```\n" + "x = 1. y\n" * 50_000,
    ],
    ids=["latin", "punctuation", "cjk", "backticks", "words", "open-fence"],
)
def test_huge_text_is_linear(text: str) -> None:
    # Quadratic work here takes minutes (a run of "!" read to its end once per piece did).
    began = time.monotonic()
    pieces = final_pieces(text)
    parts = split_for_limit(text, 4500)
    assert time.monotonic() - began < 5
    assert "".join("".join(pieces).split()) == "".join(text.split())
    assert all(len(p) <= 4500 for p in parts)


# ----- cut_ready: streaming equals cutting the whole --------------------------------------------------

CORPUS = [
    "Hello there, friend. How are you doing today? I hope all is well!\n\nNew paragraph here.",
    "今天天气真好。我们去公园散步吧！你觉得怎么样？他说：“好啊！”然后我们就出发了……真的吗？！",
    "Pi is 3.14, e.g. roughly. See https://example.com/a.b?c=d!e. Mr. Smith agrees. OK. Sure.",
    "Here is code:\n```python\ndef f(x):\n    return x. y\n\n# done? yes!\n```\nThat is it. Bye now.",
    "Use `a. b` and ``c ` d. e`` inline. A ` stray tick. Then more text follows here.\nAnd a line.",
    "1. First item here\n2. Second item here\n\n- bullet one. - bullet two!\n\n**Bold end.** Next.",
    f"好的！{SMILE}我来看看。{FAMILY}家人们！{FLAG}中国。e\u0301tude. ~ Done~ 真的~",
    "word " * 200 + "x" * 700 + "\n\n" + "汉字" * 400 + "。" + "!" * 50,
    "````\n```\ninner\n```\n````\nAfter nested fences. And more.\n```\nunclosed fence. text",
    "「これは本当に美しい景色ですね。」と彼は言いました。한국어 문장입니다. 또 다른 문장!",
    "\ud800 lone surrogate. \udc00 another one! 混合\ud83d文本。end",
    "",
    "   \n\n   ",
    "OK.",
]


@pytest.mark.parametrize("text", CORPUS)
@pytest.mark.parametrize(("min_chars", "max_chars"), [(12, 600), (0, 40), (5, 13), (1, 1)])
def test_any_chunking_gives_the_pieces_of_the_whole(
    text: str, min_chars: int, max_chars: int
) -> None:
    kw = {"min_chars": min_chars, "max_chars": max_chars}
    whole = final_pieces(text, **kw)
    assert_in_order(text, whole)
    assert streamed(list(text), **kw) == whole
    rng = random.Random(hash((text, min_chars, max_chars)) & 0xFFFF)
    for _ in range(10):
        assert streamed(random_chunks(text, rng), **kw) == whole


def test_random_texts_stream_like_the_whole() -> None:
    tokens = [
        "Hello", "world", "3.14", "e.g.", "U.S.", "1.", " ", "\n", "\n\n", ". ", "! ", "?! ",
        "...", "。", "！", "？", "……", "」", "”", ")", '"', "*", "你好", "こんにちは", "`", "``",
        "```", "```py\n", "\n```\n", "https://a.b/c?d=e!f", SMILE, FAMILY, FLAG, "e\u0301",
        "\ud800", "~", "a" * 20, "汉字" * 5, "\r\n", "\t", ",", "，",
    ]  # fmt: skip
    rng = random.Random(7)
    for _ in range(300):
        text = "".join(rng.choice(tokens) for _ in range(rng.randint(0, 80)))
        kw = {"min_chars": rng.choice([0, 3, 12]), "max_chars": rng.choice([1, 7, 30, 600])}
        whole = final_pieces(text, **kw)
        assert_in_order(text, whole)
        assert streamed(random_chunks(text, rng), **kw) == whole, (text, kw)


def test_nonfinal_rest_is_the_unsent_tail() -> None:
    rng = random.Random(3)
    for text in CORPUS:
        rest = ""
        sent: list[str] = []
        for chunk in random_chunks(text, rng):
            pieces, rest = cut_ready(rest + chunk)
            sent += pieces
        assert_in_order(text, sent, rest)
        assert sent + cut_ready(rest, final=True)[0] == final_pieces(text)


# ----- split_for_limit ------------------------------------------------------------------------------


def test_split_short_and_empty() -> None:
    assert split_for_limit("  hello  ", 10) == ["hello"]
    assert split_for_limit("", 10) == []
    assert split_for_limit(" \n ", 10) == []
    with pytest.raises(ValueError):
        split_for_limit("x", 0)


def test_split_prefers_paragraphs_then_sentences_then_spaces() -> None:
    para = "This is a paragraph. It has two sentences."  # 42 characters
    assert split_for_limit(f"{para}\n\n{para}\n\n{para}", 90) == [f"{para}\n\n{para}", para]
    # No paragraph in reach: the last sentence end.
    text = "One sentence here. Another one there. And a third one now."
    assert split_for_limit(text, 45) == [
        "One sentence here. Another one there.",
        "And a third one now.",
    ]
    # No sentence end: the last space.
    assert split_for_limit("alpha beta gamma delta epsilon", 12) == [
        "alpha beta",
        "gamma delta",
        "epsilon",
    ]
    # Nothing at all: hard cuts.
    assert split_for_limit("abcdefghij", 4) == ["abcd", "efgh", "ij"]


def test_split_fills_messages_rather_than_cutting_early() -> None:
    # An early paragraph break must not leave most of the limit unused.
    text = "Hi.\n\n" + "word " * 100
    parts = split_for_limit(text, 200)
    assert len(parts[0]) > 150


def test_split_cuts_inside_code_only_when_it_must() -> None:
    code = "```\n" + "\n".join(f"line {i}" for i in range(100)) + "\n```"
    parts = split_for_limit("Intro text.\n\n" + code, 120)
    assert all(len(p) <= 120 for p in parts)
    # Inside the code it cuts at line ends.
    assert all(p.splitlines()[-1].startswith(("line", "```")) for p in parts[1:])
    assert "".join("".join(parts).split()) == "".join(("Intro text." + code).split())


@pytest.mark.parametrize("limit", [1, 2, 3, 10, 64, 4500])
def test_split_keeps_every_non_whitespace_character(limit: int) -> None:
    rng = random.Random(limit)
    for text in CORPUS:
        parts = split_for_limit(text, limit)
        assert all(0 < len(p) <= limit for p in parts)
        assert_in_order(text, parts)
    for _ in range(50):
        text = "".join(
            rng.choice(["ab", " ", "\n\n", ". ", "。", "`", FAMILY, "汉"]) for _ in range(200)
        )
        parts = split_for_limit(text, limit)
        assert all(0 < len(p) <= limit for p in parts)
        assert_in_order(text, parts)


def test_split_limit_one_and_emoji() -> None:
    assert split_for_limit("a b", 1) == ["a", "b"]
    assert "".join(split_for_limit(FAMILY, 1)) == FAMILY
    assert split_for_limit(FAMILY + FAMILY, 5) == [FAMILY, FAMILY]


# ----- forward_nodes --------------------------------------------------------------------------------


def test_forward_nodes_shape() -> None:
    nodes = forward_nodes("Hello there.", name="Momo", uin=10001)
    assert nodes == [
        {
            "type": "node",
            "data": {
                "user_id": "10001",
                "nickname": "Momo",
                "uin": "10001",
                "name": "Momo",
                "content": [{"type": "text", "data": {"text": "Hello there."}}],
            },
        }
    ]
    # Our own parser reads them back.
    (node,) = parse_forward_nodes(nodes)
    assert (node.user_id, node.nickname, node.content) == ("10001", "Momo", [T("Hello there.")])


def test_forward_nodes_split_long_text() -> None:
    text = "\n\n".join(f"Paragraph {i}. " + "word " * 50 for i in range(20))
    nodes = forward_nodes(text, name="桃子", uin="123", node_chars=500)
    assert len(nodes) > 1
    parts = [n["data"]["content"][0]["data"]["text"] for n in nodes]
    assert all(len(p) <= 500 for p in parts)
    assert parts == split_for_limit(text, 500)
    assert {n["data"]["uin"] for n in nodes} == {"123"}


def test_forward_nodes_edge_cases() -> None:
    assert forward_nodes("", name="Momo", uin=1) == []
    assert forward_nodes("   ", name="Momo", uin=1) == []
    # go-cqhttp drops a node without a name: the uin stands in.
    (node,) = forward_nodes("hi", name=" ", uin=42)
    assert node["data"]["name"] == node["data"]["nickname"] == "42"


# ----- triggers -------------------------------------------------------------------------------------

SELF = 10001
TRIGGER = {
    "self_id": SELF,
    "prefixes": ["#", "小桃"],
    "nicknames": ["momo", "桃子"],
    "reply_to_bot": False,
}


@pytest.mark.parametrize(
    ("message", "triggered", "left"),
    [
        ("[CQ:at,qq=10001] hello", True, [T("hello")]),
        ("[CQ:at,qq=10001]hello", True, [T("hello")]),
        ("[CQ:at,qq=10001]  two spaces", True, [T(" two spaces")]),
        ("hi [CQ:at,qq=10001] there", True, [T("hi there")]),
        ("[CQ:at,qq=10001] ", True, []),
        ("[CQ:at,qq=10001][CQ:at,qq=10001] twice", True, [T("twice")]),
        ("[CQ:at,qq=all] hi", False, [Segment("at", {"qq": "all"}), T(" hi")]),
        ("[CQ:at,qq=20002] hi", False, [Segment("at", {"qq": "20002"}), T(" hi")]),
        ("#help me", True, [T("help me")]),
        ("  #help", True, [T("help")]),
        ("# help", True, [T("help")]),
        ("小桃，你好", True, [T("你好")]),
        ("小桃你好", True, [T("你好")]),  # a prefix needs no separator
        ("momo, hi", True, [T("hi")]),
        ("Momo hi", True, [T("hi")]),
        ("MOMO：在吗", True, [T("在吗")]),
        ("momo: what's up", True, [T("what's up")]),
        ("momo", True, []),
        ("momo？", True, []),
        ("桃子 在吗", True, [T("在吗")]),
        ("momonga is cute", False, [T("momonga is cute")]),  # a nickname needs a separator
        ("桃子们好", False, [T("桃子们好")]),
        ("I said momo, hi", False, [T("I said momo, hi")]),  # only at the start
        ("hello", False, [T("hello")]),
        ("", False, []),
        (
            "[CQ:reply,id=-5][CQ:at,qq=10001] 小桃 看看",
            True,
            [Segment("reply", {"id": "-5"}), T("看看")],
        ),
        (
            "[CQ:image,file=a.jpg,url=https://x/y.jpg]momo 这是什么",
            True,
            [Segment("image", {"file": "a.jpg", "url": "https://x/y.jpg"}), T("这是什么")],
        ),
        ("[CQ:at,qq=10001] momo, #hi", True, [T("#hi")]),
    ],
)
def test_strip_trigger(message: str, triggered: bool, left: list[Segment]) -> None:
    assert strip_trigger(normalize_message(message), **TRIGGER) == (triggered, left)


def test_reply_to_bot_triggers_and_keeps_the_text() -> None:
    segs = [Segment("reply", {"id": "7"}), T("what do you mean")]
    assert strip_trigger(segs, **{**TRIGGER, "reply_to_bot": True}) == (True, segs)


def test_trigger_odd_input() -> None:
    kw = {**TRIGGER, "prefixes": ["", "#"], "nicknames": [""]}
    assert strip_trigger([T("hello")], **kw) == (False, [T("hello")])
    # An at whose qq is a number, text split across segments, a text with no text.
    segs = [Segment("at", {"qq": SELF}), T(" #"), T("help"), Segment("text", {})]
    assert strip_trigger(segs, **TRIGGER) == (True, [T("help"), Segment("text", {})])
    # Longest match wins; ASCII case folding leaves other scripts alone.
    kw = {**TRIGGER, "prefixes": ["小", "小桃子"], "nicknames": ["İx"]}
    assert strip_trigger([T("小桃子 hi")], **kw) == (True, [T("hi")])
    assert strip_trigger([T("ix hi")], **kw)[0] is False
    # The input list is not changed.
    segs = normalize_message("[CQ:at,qq=10001] hi")
    before = list(segs)
    strip_trigger(segs, **TRIGGER)
    assert segs == before


def test_mentions_self_and_reply_id() -> None:
    assert mentions_self(normalize_message("x[CQ:at,qq=10001]"), SELF)
    assert not mentions_self(normalize_message("[CQ:at,qq=all]"), SELF)
    assert not mentions_self([Segment("at", {})], SELF)
    assert reply_id(normalize_message("[CQ:reply,id=-2147483648]hi")) == "-2147483648"
    assert reply_id([Segment("reply", {"id": 42})]) == "42"
    assert reply_id([Segment("reply", {"id": "abc"})]) == "abc"
    assert reply_id([Segment("reply", {"id": ""}), Segment("reply", {"id": "9"})]) == "9"
    assert reply_id([Segment("reply", {"id": None}), Segment("reply", {"id": True})]) is None
    assert reply_id([Segment("reply", {"seq": 5})]) is None
    assert reply_id([T("no reply")]) is None


# ----- to_model_text --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("segment", "text"),
    [
        (T("plain 文本 😊"), "plain 文本 😊"),
        (
            Segment("image", {"file": "abc.jpg", "url": "https://q.qq.com/a.jpg"}),
            "[image: https://q.qq.com/a.jpg]",
        ),
        (Segment("image", {"file": "http://h/b.png"}), "[image: http://h/b.png]"),
        (Segment("image", {"file": "base64://AAAA"}), "[image]"),
        (Segment("image", {"file": "file:///etc/passwd"}), "[image]"),
        (Segment("image", {"url": 5}), "[image]"),
        (Segment("record", {"url": "https://v/a.amr"}), "[voice: https://v/a.amr]"),
        (Segment("record", {"file": "a.amr"}), "[voice]"),
        (Segment("video", {"url": "https://v/a.mp4"}), "[video: https://v/a.mp4]"),
        (Segment("face", {"id": "14"}), "[face:14]"),
        (Segment("face", {"id": 14}), "[face:14]"),
        (Segment("face", {}), "[face]"),
        (Segment("at", {"qq": "123", "name": "Alice"}), "@Alice"),
        (Segment("at", {"qq": "123"}), "@123"),
        (Segment("at", {"qq": 123}), "@123"),
        (Segment("at", {"qq": "all"}), "@all"),
        (Segment("at", {}), "@"),
        (Segment("reply", {"id": "1"}), ""),
        (Segment("forward", {"id": "abc"}), "[forwarded messages]"),
        (Segment("json", {"data": '{"app":"x"}'}), "[card]"),
        (Segment("xml", {"data": "<x/>"}), "[card]"),
        (Segment("miniapp", {}), "[card]"),
        (Segment("contact", {"type": "qq", "id": "1"}), "[card]"),
        (Segment("markdown", {"content": "# Title"}), "# Title"),
        (Segment("markdown", {"content": 3}), "[markdown]"),
        (Segment("mface", {"summary": "[开心]"}), "[sticker: 开心]"),
        (Segment("mface", {}), "[sticker]"),
        (Segment("dice", {"result": "3"}), "[dice]"),
        (Segment("rps", {"result": "1"}), "[rps]"),
        (Segment("location", {"lat": "1"}), "[location]"),
        (Segment("file", {"name": "report.pdf"}), "[file: report.pdf]"),
        (Segment("poke", {}), "[poke]"),
        (Segment("new]type[", {}), "[newtype]"),
        (Segment("]]]", {}), "[unsupported]"),
        (Segment("text", {"text": 5}), "5"),
        (Segment("text", {}), ""),
    ],
)
def test_model_text_of_one_segment(segment: Segment, text: str) -> None:
    assert to_model_text([segment]) == text


def test_model_text_of_a_message() -> None:
    segs = normalize_message(
        "[CQ:reply,id=9][CQ:at,qq=10001] 看看这个[CQ:image,file=a.jpg,url=https://x/y.jpg]"
        "[CQ:face,id=14]好不好"
    )
    assert to_model_text(segs) == "@10001 看看这个[image: https://x/y.jpg][face:14]好不好"
    # Data that is not a mapping at all does not break it.
    assert to_model_text([Segment("image", None), Segment("at", "x")]) == "[image]@"  # type: ignore[arg-type]


# ----- quote_context --------------------------------------------------------------------------------


def test_quote_context() -> None:
    assert quote_context("Alice", "hello there") == "[quoting Alice: hello there]\n"
    assert (
        quote_context("Alice", "line one\n\n  line two  ") == "[quoting Alice: line one line two]\n"
    )
    long = quote_context("Bob", "x" * 1000, max_chars=50)
    assert long == "[quoting Bob: " + "x" * 49 + "…]\n"
    assert quote_context("", "hi") == "[quoting: hi]\n"
    assert quote_context("Alice", "  \n ") == "[quoting Alice]\n"
    assert quote_context("A\nB", "t") == "[quoting A B: t]\n"
    assert quote_context("A", "abc", max_chars=1) == "[quoting A: …]\n"
    # The cut never splits an emoji.
    cut = quote_context("A", "ab" + FAMILY + "cdef", max_chars=5)
    assert cut == "[quoting A: ab…]\n"
