"""A conversation written out as the one prompt a MOMO AI agent takes."""

from __future__ import annotations

import json

import pytest

from adapters.momoai.prompt import build_prompt, message_text

BIG = 1_000_000


def sys(text: str) -> dict[str, object]:
    return {"role": "system", "content": text}


def user(content: object) -> dict[str, object]:
    return {"role": "user", "content": content}


def bot(content: object, **extra: object) -> dict[str, object]:
    return {"role": "assistant", "content": content, **extra}


def test_one_user_message_is_sent_as_it_is() -> None:
    assert build_prompt([user("你好")], BIG) == "你好"
    # Exactly: no label, no stripping.
    assert build_prompt([user("  two\n\nlines \n")], BIG) == "  two\n\nlines \n"
    # Even over the budget.
    assert build_prompt([user("x" * 50)], 10) == "x" * 50


def test_one_user_message_among_empty_ones() -> None:
    messages = [bot(None, tool_calls=[{"id": "1"}]), user("hi"), bot("   ")]
    assert build_prompt(messages, BIG) == "hi"


def test_no_messages() -> None:
    assert build_prompt([], BIG) == ""
    assert build_prompt([user(""), bot(None)], BIG) == ""


def test_system_and_one_user_message() -> None:
    assert build_prompt([sys("Be brief."), user("What is 2+2?")], BIG) == (
        "Be brief.\n\nUser: What is 2+2?"
    )


def test_only_system() -> None:
    assert build_prompt([sys("a"), sys("b")], BIG) == "a\n\nb"


def test_conversation_transcript() -> None:
    messages = [
        sys("You are a helpful assistant."),
        user("What is the capital of France?"),
        bot("Paris."),
        user("And of Italy?"),
    ]
    assert build_prompt(messages, BIG) == (
        "You are a helpful assistant.\n\n"
        "User: What is the capital of France?\n\n"
        "Assistant: Paris.\n\n"
        "User: And of Italy?"
    )


def test_no_system_part() -> None:
    assert build_prompt([user("a"), bot("b"), user("c")], BIG) == (
        "User: a\n\nAssistant: b\n\nUser: c"
    )


def test_system_messages_anywhere_go_first() -> None:
    messages = [sys(" one "), user("a"), sys("two\nlines"), bot("b"), user("c")]
    assert build_prompt(messages, BIG) == (
        "one\n\ntwo\nlines\n\nUser: a\n\nAssistant: b\n\nUser: c"
    )
    messages = [{"role": "developer", "content": "dev"}, user("a"), bot("b")]
    assert build_prompt(messages, BIG) == "dev\n\nUser: a\n\nAssistant: b"


def test_tools_and_empty_messages() -> None:
    messages = [
        user("What time is it?"),
        bot(None, tool_calls=[{"id": "c1", "function": {"name": "clock", "arguments": "{}"}}]),
        {"role": "tool", "tool_call_id": "c1", "content": "12:00"},
        bot(""),
        user("   "),
        bot("It is noon."),
        user("Thanks"),
    ]
    assert build_prompt(messages, BIG) == (
        "User: What time is it?\n\nTool: 12:00\n\nAssistant: It is noon.\n\nUser: Thanks"
    )


def test_assistant_text_with_tool_calls_is_kept() -> None:
    messages = [user("a"), bot("Let me check.", tool_calls=[{"id": "1"}]), user("b")]
    assert build_prompt(messages, BIG) == "User: a\n\nAssistant: Let me check.\n\nUser: b"


def test_turn_text_is_stripped_and_keeps_its_lines() -> None:
    messages = [user("\n  line 1\nline 2  \n"), bot("```\ncode\n```")]
    assert build_prompt(messages, BIG) == "User: line 1\nline 2\n\nAssistant: ```\ncode\n```"


def test_content_parts() -> None:
    parts = [
        {"type": "text", "text": "Look:"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "text", "text": "what is it?"},
    ]
    assert build_prompt([user(parts)], BIG) == "Look:\n[image]\nwhat is it?"
    assert build_prompt([user("hi"), bot("hello"), user(parts)], BIG) == (
        "User: hi\n\nAssistant: hello\n\nUser: Look:\n[image]\nwhat is it?"
    )
    # An image alone is still a message.
    assert build_prompt([user("a"), user([{"type": "image_url"}])], BIG) == (
        "User: a\n\nUser: [image]"
    )


def test_message_text() -> None:
    assert message_text("x") == "x"
    assert message_text(None) == ""
    assert message_text(5) == ""
    assert message_text({"text": "x"}) == ""
    assert (
        message_text(
            [
                {"type": "text", "text": "a"},
                {"type": "input_audio", "input_audio": {}},
                {"type": "file", "file": {}},
                {"type": "unknown"},
                {"type": "text", "text": ""},
                {"type": "text", "text": 5},
                {"text": "untyped"},
                "bare string",
                7,
            ]
        )
        == "a\n[audio]\n[file]\nuntyped\nbare string"
    )


def test_odd_messages() -> None:
    messages = [
        "not a dict",
        {"content": "no role"},
        {"role": "narrator", "content": "unknown role"},
        {"role": "USER", "content": "upper"},
        {"role": "function", "content": "legacy tool"},
        bot("end"),
    ]
    assert build_prompt(messages, BIG) == (  # type: ignore[arg-type]
        "User: no role\n\nUser: unknown role\n\nUser: upper\n\nTool: legacy tool\n\nAssistant: end"
    )


# ----- trimming ---------------------------------------------------------------------------------


def _conversation(n: int) -> list[dict[str, object]]:
    out: list[dict[str, object]] = [sys("SYS")]
    for i in range(n):
        out.append(user(f"q{i}"))
        out.append(bot(f"a{i}"))
    out.append(user("last"))
    return out


def test_fits_exactly() -> None:
    messages = _conversation(3)
    full = build_prompt(messages, BIG)
    assert build_prompt(messages, len(full)) == full
    shorter = build_prompt(messages, len(full) - 1)
    assert shorter != full
    assert len(shorter) <= len(full) - 1


def test_oldest_turns_are_dropped_first() -> None:
    messages = _conversation(3)
    # "SYS" + "\n\n" + "User: q2" ... keep the newest ones that fit.
    kept = "SYS\n\nAssistant: a2\n\nUser: last"
    assert build_prompt(messages, len(kept)) == kept
    assert build_prompt(messages, len(kept) + 5) == kept
    kept2 = "SYS\n\nUser: q2\n\nAssistant: a2\n\nUser: last"
    assert build_prompt(messages, len(kept2)) == kept2


def test_every_budget_keeps_a_suffix_within_it() -> None:
    messages = _conversation(10)
    full = build_prompt(messages, BIG)
    minimum = "SYS\n\nUser: last"
    for budget in range(0, len(full) + 10):
        prompt = build_prompt(messages, budget)
        assert prompt.startswith("SYS\n\n")
        assert prompt.endswith("User: last")
        # What is kept is the end of the full transcript.
        assert full.endswith(prompt[len("SYS\n\n") :])
        assert len(prompt) <= max(budget, len(minimum))


def test_system_and_newest_are_kept_whole_over_budget() -> None:
    messages = [sys("S" * 100), user("old"), bot("older answer"), user("N" * 100)]
    assert build_prompt(messages, 10) == "S" * 100 + "\n\n" + "User: " + "N" * 100
    assert build_prompt([user("old"), user("N" * 100)], 0) == "User: " + "N" * 100
    assert build_prompt([user("old"), user("N" * 100)], -5) == "User: " + "N" * 100


def test_a_big_middle_turn_stops_the_trim() -> None:
    # Trimming keeps a contiguous run of the newest turns: a big turn is not skipped over to
    # keep older small ones.
    messages = [user("tiny"), bot("B" * 1000), user("newest")]
    assert build_prompt(messages, 100) == "User: newest"


def test_newest_is_what_comes_last_even_if_not_a_user_message() -> None:
    messages = [user("q"), bot("a" * 100)]
    assert build_prompt(messages, 10) == "Assistant: " + "a" * 100


def test_lone_surrogates_are_replaced() -> None:
    assert build_prompt([user("a\ud800")], BIG) == "a\ufffd"
    prompt = build_prompt([sys("s\udc00"), user("q\ud83d"), bot("😀")], BIG)
    assert prompt == "s\ufffd\n\nUser: q\ufffd\n\nAssistant: 😀"
    json.dumps({"prompt": prompt}, ensure_ascii=False).encode()


@pytest.mark.parametrize("n", [0, 1, 50, 2000])
def test_large_conversations(n: int) -> None:
    messages = _conversation(n)
    prompt = build_prompt(messages, 4000)
    assert prompt.endswith("User: last")
    assert len(prompt) <= 4000
