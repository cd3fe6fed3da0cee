from alpr.progress import LogLines, show_progress


def test_log_lines_come_now_and_then_and_at_the_end(capsys):
    lines = LogLines("test", 5, every=3600)
    for _ in range(5):
        lines()
    assert capsys.readouterr().out == "test: 5/5\n"
    lines = LogLines("test", 3, every=0)
    lines()
    lines(2)
    assert capsys.readouterr().out == "test: 1/3\ntest: 3/3\n"


def test_progress_is_log_lines_where_the_output_is_no_terminal(capsys):
    with show_progress("validate", 2) as advance:  # pytest's captured stdout is no terminal
        advance()
        advance()
    assert capsys.readouterr().out == "validate: 2/2\n"
    with show_progress("validate", 2, enabled=False) as advance:
        advance(2)
    assert capsys.readouterr().out == ""


def test_progress_is_a_bar_on_a_terminal():
    import os
    import pty
    import subprocess
    import sys

    script = ("from alpr.progress import show_progress\n"
              "with show_progress('synthesize', 4, transient=False) as advance:\n"
              "    advance(4)\n")
    leader, follower = pty.openpty()
    done = subprocess.run([sys.executable, "-c", script], stdout=follower, stderr=subprocess.PIPE, timeout=60,
                          env={**os.environ, "COLUMNS": "100"})
    os.close(follower)
    chunks = []
    while True:  # one read may return part of it; the end is EIO once the child's side is closed
        try:
            chunk = os.read(leader, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    shown = b"".join(chunks).decode(errors="replace")
    os.close(leader)
    assert done.returncode == 0, done.stderr
    assert "synthesize" in shown and "100%" in shown and "synthesize: 4/4" not in shown  # a bar, not log lines
