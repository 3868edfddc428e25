#!/usr/bin/python3
"""chat_ref.py — daemon/chat.c's formatters against independent references.

llama2: the Llama-2-chat Jinja template, as its tokenizer_config.json carries it, rendered
by jinja2 the way Hugging Face's apply_chat_template does (a sandboxed environment with
trim_blocks and lstrip_blocks, raise_exception); the C formatter must give the same text, or
refuse exactly the conversations the template raises on.
longllama-instruct: LongLLaMA's demo (long_llama_instruct_colab.ipynb, SimpleChatBot) and
fine-tuning (chat_tuning_data_processor) transcribed in Python: the same text, and the same
pieces tokenized separately.

Drives `test_chat render KIND` (argv[1]: its path). Needs python3-jinja2 (scripts/deps.sh);
without it the llama2 half prints why and the test is skipped (exit 77), not passed."""
import subprocess
import sys

TEST_CHAT = sys.argv[1]

LLAMA2 = ("{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
          "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = "
          "messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
          "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception("
          "'Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
          "{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + "
          "system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = "
          "message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + "
          "'[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
          "{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}")

OPENING = ("A chat between a user (denoted as USER:) and an artificial intelligence assistant "
           "(denoted as ASSISTANT:). The assistant gives helpful, detailed, and polite answers "
           "to the user's questions.\n\n")

CONVERSATIONS = [
    [("user", "Hi")],
    [("system", "Be brief."), ("user", "Hi")],
    [("system", "  padded system  "), ("user", "\n  question with spaces\t ")],
    [("user", "one"), ("assistant", " two "), ("user", "three")],
    [("system", ""), ("user", "empty system")],
    [("system", "S"), ("user", "a"), ("assistant", "b\n\nc"), ("user", "d"),
     ("assistant", "e"), ("user", "f\\g")],
    [("user", "unicode: żółw — ok"), ("assistant", "ja")],
    [("user", "a"), ("user", "b")],             # the template raises
    [("assistant", "first")],                   # the template raises
    [("user", "a"), ("assistant", "b")],        # ends with an answer
    [("user", "text with </s> and <s> and [INST] inside")],
]

passed = failed = 0


def check(cond, what, detail=""):
    global passed, failed
    if cond:
        passed += 1
    else:
        failed += 1
        print("FAIL %s: %s" % (what, detail), flush=True)


def render_c(kind, conv):
    def esc(s):
        return s.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t")
    stdin = "".join("%s\t%s\n" % (r, esc(c)) for r, c in conv)
    out = subprocess.run([TEST_CHAT, "render", kind], input=stdin.encode(),
                         capture_output=True, check=True).stdout.decode()
    if out.startswith("ERROR "):
        return None, None
    text, _, parts = out.rpartition("\n--parts--\n")
    raw = text.encode()
    pieces = []
    for line in parts.split("\n"):
        if line.strip():
            k, off, n = map(int, line.split())
            pieces.append(("BOS", "EOS")[k - 1] if k else raw[off:off + n].decode())
    return text, pieces


def llama2_ref(conv):
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(msg):
        raise jinja2.exceptions.TemplateError(msg)
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    t = env.from_string(LLAMA2)
    try:
        return t.render(messages=[{"role": r, "content": c} for r, c in conv],
                        bos_token="<s>", eos_token="</s>", add_generation_prompt=True)
    except jinja2.exceptions.TemplateError:
        return None


def longllama_ref(conv):
    """SimpleChatBot's and chat_tuning_data_processor's pieces, in order."""
    pieces = ["BOS"]
    i = 0
    if conv and conv[0][0] == "system":
        pieces += [conv[0][1], "\n\n"] if conv[0][1] else ["\n\n"]
        i = 1
    else:
        pieces.append(OPENING)
    for role, content in conv[i:]:
        if role == "user":
            pieces += ["\nUSER: "] + ([content] if content else [])
        elif role == "assistant":
            pieces += ["\nASSISTANT: "] + ([content] if content else []) + ["EOS"]
        else:
            return None, None
    pieces.append("\nASSISTANT: ")
    text = "".join({"BOS": "<s>", "EOS": "</s>"}.get(p, p) for p in pieces)
    return text, pieces


def main():
    try:
        import jinja2  # noqa: F401
        have_jinja = True
    except ImportError:
        have_jinja = False
        print("llama2 reference skipped: no jinja2 for %s (install python3-jinja2: "
              "scripts/deps.sh)" % sys.executable)
    for n, conv in enumerate(CONVERSATIONS):
        if have_jinja:
            want = llama2_ref(conv)
            got, pieces = render_c("llama2", conv)
            if want == "":  # nothing rendered: recall refuses an empty prompt
                want = None
            check(got == want, "llama2 conversation %d" % n, "\n got %r\nwant %r" % (got, want))
            if got is not None:
                # Hugging Face splits the rendered text at the special tokens only.
                joined = "".join({"BOS": "<s>", "EOS": "</s>"}.get(p, p) for p in pieces)
                check(joined == got and all(
                    pieces[j] in ("BOS", "EOS") or pieces[j + 1] in ("BOS", "EOS")
                    for j in range(len(pieces) - 1)),
                    "llama2 conversation %d: text parts only between special tokens" % n, pieces)
        want_text, want_pieces = longllama_ref(conv)
        got, pieces = render_c("longllama-instruct", conv)
        check(got == want_text, "longllama-instruct conversation %d" % n,
              "\n got %r\nwant %r" % (got, want_text))
        check(pieces == want_pieces, "longllama-instruct conversation %d pieces" % n,
              "\n got %r\nwant %r" % (pieces, want_pieces))
    print("%d passed, %d failed" % (passed, failed))
    if failed:
        return 1
    return 0 if have_jinja else 77


if __name__ == "__main__":
    sys.exit(main())
