#!/usr/bin/env python3
"""Extracts the ```cpp blocks of README.md into a header that test_readme.cpp
compiles and runs, so that the README's examples are tested as written.

Convention. Every ```cpp block in the README is preceded (on the line right
before the fence, blank lines allowed in between) by an HTML comment that
says what it is; GitHub does not render it:

  <!-- readme-test: program CHECKER [ARGS...] -->
      A whole program. Its #include lines are hoisted to the top of the
      generated header, the rest goes into a namespace of its own with
      `int main(` renamed, and test_readme.cpp runs that main in a child
      process checked by the named CHECKER (see test_readme.cpp): `exits`
      (main returns 0 within a few seconds), `echo_server PORT` (it serves
      a TCP echo on 127.0.0.1:PORT), `udp_echo PORT` (it echoes datagrams
      on 127.0.0.1:PORT) or `unix_echo PATH` (it serves an echo on the Unix
      socket PATH). Renamed, main loses its implicit
      `return 0`: a program that ends must return explicitly.

  <!-- readme-test: fragment [setup=FUNCTION] [continues] [check=FUNCTION(NAMES...)] -->
      Statements, as in the body of a coroutine. They become the body of
      `couring::task<void> fragment_N(io_context& ctx, tcp_stream& stream,
      const endpoint& remote)`, after a preamble that declares the other
      names a fragment may use (`buf`, `x`, `y`, `port` -- remote's port as a
      string; the helper coroutines `handle_request`, `fetch`, `read_reply`,
      `heartbeat` come from test_readme.cpp). With setup=, the body starts
      with `auto readme_setup_guard = co_await readme_setup::FUNCTION(ctx);`
      (a working directory of its own, a signal sent later, a resolver that
      never asks the machine's name servers); the guard undoes it at the end.
      With continues, the block goes on from the previous fragment, in the
      same body (a README section that uses the names of the one before it).
      With check=, the call `co_await readme_checks::FUNCTION(NAMES...)` is
      appended, so the fragment's own results are checked (check= comes
      last). test_readme.cpp runs every fragment with `stream` connected to a
      peer that has reset the connection, and `remote` a listener.

A ```cpp block without such a comment, or with one this script does not
understand, fails the build with the README line number: a new example must
say how it is tested. Blocks in other languages (```sh, ```meson) are left
alone.

usage: readme_blocks.py README.md OUTPUT.hpp
"""

import re
import sys

MARKER = re.compile(r"<!--\s*readme-test:\s*(.*?)\s*-->\s*$")
FENCE_OPEN = re.compile(r"^```(\S*)\s*$")


def fail(readme, line, message):
    sys.exit(f"{readme}:{line}: {message}")


def blocks(readme):
    """Yields (line number of the fence, marker text or None, code lines)."""
    with open(readme, encoding="utf-8") as f:
        lines = f.read().split("\n")
    i = 0
    while i < len(lines):
        m = FENCE_OPEN.match(lines[i])
        if not m:
            i += 1
            continue
        lang, start = m.group(1), i
        j = i + 1
        while j < len(lines) and lines[j].strip() != "```":
            j += 1
        if j == len(lines):
            fail(readme, start + 1, "a ``` block that never ends")
        if lang == "cpp":
            # The marker: the closest non-blank line before the fence.
            k = start - 1
            while k >= 0 and lines[k].strip() == "":
                k -= 1
            mm = MARKER.match(lines[k].strip()) if k >= 0 else None
            yield start + 1, (mm.group(1) if mm else None), lines[start + 1 : j]
        i = j + 1


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    readme, output = sys.argv[1], sys.argv[2]
    includes, bodies, programs, fragments = [], [], [], []
    fragment_list, open_fragment = [], None
    count = 0
    for line, marker, code in blocks(readme):
        count += 1
        if marker is None:
            fail(readme, line, "a ```cpp block without a <!-- readme-test: program|fragment --> "
                 "comment before it (see tests/readme_blocks.py)")
        words = marker.split()
        kind = words[0] if words else ""
        location = f'"README.md:{line}"'
        if kind == "program":
            if len(words) < 2:
                fail(readme, line, "program: name its checker, e.g. `program exits`")
            checker, args = words[1], words[2:]
            if not re.fullmatch(r"[A-Za-z_]\w*", checker) or not all(
                    re.fullmatch(r"[\w.:/@-]+", a) for a in args):
                fail(readme, line, f"program: bad checker or arguments: {marker!r}")
            text = "\n".join(code)
            if len(re.findall(r"\bint\s+main\s*\(", text)) != 1:
                fail(readme, line, "program: needs exactly one `int main(`")
            rest = []
            for c in code:
                if re.match(r"\s*#\s*include\b", c):
                    includes.append(c.strip())
                else:
                    rest.append(c)
            ns = f"readme_program_{line}"
            body = re.sub(r"\bint\s+main\s*\(", "int readme_main(", "\n".join(rest))
            # Renamed, main has no implicit `return 0` any more; a server's
            # main never returns, and g++ would warn about it.
            bodies.append(f"// README.md line {line}: program ({checker})\n"
                          f"#pragma GCC diagnostic push\n"
                          f"#pragma GCC diagnostic ignored \"-Wreturn-type\"\n"
                          f"namespace {ns} {{\n#line {line + 1} \"README.md\"\n{body}\n}} // namespace {ns}\n"
                          f"#pragma GCC diagnostic pop\n")
            arg_list = ", ".join(f'"{a}"' for a in args)
            if re.search(r"\bint\s+main\s*\(\s*(void)?\s*\)", text):
                call = f"[] {{ return {ns}::readme_main(); }}"
            else:
                call = (f'[] {{ char a0[] = "readme"; char* av[] = {{a0, nullptr}}; '
                        f"return {ns}::readme_main(1, av); }}")
            programs.append(f'  {{{location}, "{checker}", {{{arg_list}}}, {call}}},')
        elif kind == "fragment":
            check, setup, continues = None, None, False
            for w in words[1:]:
                if w.startswith("check="):
                    check = " ".join(words[words.index(w):])[len("check="):]
                    break
                if w.startswith("setup=") and re.fullmatch(r"setup=[A-Za-z_]\w*", w):
                    setup = w[len("setup="):]
                elif w == "continues":
                    continues = True
                else:
                    fail(readme, line, f"fragment: unknown option {w!r}")
            if check is not None and not re.fullmatch(r"[A-Za-z_]\w*\([\w\s,]*\)", check):
                fail(readme, line, f"fragment: check= wants FUNCTION(NAMES...), got {check!r}")
            if any(re.search(r"\bint\s+main\s*\(", c) for c in code):
                fail(readme, line, "fragment: has a main(); mark it `program`")
            code_text = f"#line {line + 1} \"README.md\"\n" + "\n".join(code) + "\n"
            if continues:
                if not open_fragment or open_fragment["check"] is not None:
                    fail(readme, line, "fragment: continues, but the fragment before it ended "
                         "(it has a check=, or there is none)")
                if setup is not None:
                    fail(readme, line, "fragment: continues takes no setup=")
                open_fragment["code"] += code_text
                open_fragment["check"] = check
                continue
            open_fragment = {"line": line, "setup": setup, "check": check, "code": code_text}
            fragment_list.append(open_fragment)
        else:
            fail(readme, line, f"unknown readme-test kind {kind!r} (program or fragment)")
    if count == 0:
        fail(readme, 1, "no ```cpp block at all: nothing to test")
    for frag in fragment_list:
        line = frag["line"]
        fn = f"readme_fragment_{line}"
        head = (f"  auto readme_setup_guard = co_await readme_setup::{frag['setup']}(ctx);\n"
                if frag["setup"] else "")
        tail = f"\n  co_await readme_checks::{frag['check']};" if frag["check"] else ""
        bodies.append(
            f"// README.md line {line}: fragment\n"
            f"inline couring::task<void> {fn}(couring::io_context& ctx, couring::tcp_stream& stream,\n"
            f"    const couring::endpoint& remote) {{\n"
            f"  using namespace couring;\n"
            f"  using namespace readme_env;\n"
            f"  [[maybe_unused]] std::byte buf[16];\n"
            f"  [[maybe_unused]] int x = 1, y = 2;\n"
            f"  [[maybe_unused]] std::string port = std::to_string(remote.port());\n"
            f"  (void)ctx; (void)stream; (void)remote;\n"
            f"{head}{frag['code']}#line 1 \"readme_blocks.hpp\"{tail}\n}}\n")
        fragments.append(f'  {{"README.md:{line}", &{fn}}},')

    out = ["// Generated by tests/readme_blocks.py from README.md: do not edit.", "#pragma once", ""]
    out += ["#include <string>", "#include <vector>"] + sorted(set(includes))
    out += ["", "namespace readme_generated {", ""]
    out += bodies
    out += ["inline const std::vector<readme_program> programs = {"] + programs + ["};"]
    out += ["inline const std::vector<readme_fragment> fragments = {"] + fragments + ["};"]
    out += ["", "} // namespace readme_generated", ""]
    with open(output, "w", encoding="utf-8") as f:
        f.write("\n".join(out))


if __name__ == "__main__":
    main()
