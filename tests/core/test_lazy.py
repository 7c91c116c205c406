"""graphfix.core.lazy: heavy modules on first use, and `warm`, which imports them on a thread meanwhile."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_warm_imports_on_a_thread_and_leaves_a_failure_to_the_first_use():
    script = textwrap.dedent("""
        import sys
        from graphfix.core.lazy import warm
        assert "fractions" not in sys.modules and "xml.dom.minidom" not in sys.modules
        thread = warm("xml.dom.minidom", "graphfix_no_such_module", "fractions")
        thread.join(60)
        print(sorted(m for m in ("xml.dom.minidom", "fractions", "graphfix_no_such_module") if m in sys.modules))
        print(warm("xml.dom.minidom"))  # nothing left to import: no thread
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    # the failure stops that thread's imports (the first use reports it); those before it are done
    assert done.stdout.splitlines() == ["['xml.dom.minidom']", "None"], done.stdout
